"""``/v1/users/{user_id}/token``: mint a user's token (admin).

For a product backend that holds an admin key but not the token secret: it asks here for the
token of the user who just signed in and hands it to that user's front end. Backends that do
hold ``HERALD_USER_TOKEN_SECRET`` compute it themselves (:func:`herald.auth.user_token`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from herald.auth import Authenticator, get_authenticator, key_with
from herald.webapi import problem_responses
from services.inapp_store.api.deps import UserPath
from services.inapp_store.api.models import UserTokenOut

router = APIRouter(
    prefix="/v1/users/{user_id}",
    tags=["admin"],
    dependencies=[key_with("tokens:mint")],
    responses=problem_responses(401, 403, 422, 429),
)


@router.post("/token", response_model=UserTokenOut, summary="Mint a user's token (admin)")
def mint_user_token(
    user_id: UserPath, authenticator: Annotated[Authenticator, Depends(get_authenticator)]
) -> UserTokenOut:
    """The token that opens this user's inbox and stream. Needs an API key with the
    ``tokens:mint`` scope. The same user always gets the same token (until the secret is
    rotated); nothing is stored."""
    return UserTokenOut(user_id=user_id, token=authenticator.token_for(user_id))
