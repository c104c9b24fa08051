"""Browser tests (issue 12): the ``<herald-inbox>`` and ``<herald-preferences>`` components on
the read API's demo page, driven by Playwright (from PyPI) in Debian's Chromium against the
whole real pipeline."""
