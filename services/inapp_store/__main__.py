"""``python -m services.inapp_store``: run the in-app store (see services.inapp_store.service)."""

from services.inapp_store.service import main

if __name__ == "__main__":
    main()
