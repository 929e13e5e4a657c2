"""client/: the HTTP side. ``http`` owns the aiohttp session and auth (the only module that
sees aiohttp's exceptions), ``answers`` classifies each response, ``headers`` reads the
server's rate-limit and retry headers, ``masking`` keeps secrets out of what is written."""
