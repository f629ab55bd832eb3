"""Our middleware: WhiteNoise that keeps non-static requests on the event loop, and
the Content-Security-Policy header."""

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import DisallowedHost
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware:
    """WhiteNoise for STATIC_URL; every other request passes by without a thread hop.

    WhiteNoise's middleware is sync-only, so in its place in the chain Django ran
    every request (a ticket, an API call) through a thread and back to the loop.
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.whitenoise = WhiteNoiseMiddleware(get_response)
        markcoroutinefunction(self)  # how Django's handler knows to await us

    async def __call__(self, request):
        whitenoise = self.whitenoise
        if request.path_info.startswith(whitenoise.static_prefix):
            if whitenoise.autorefresh:  # DEBUG: looks on disk for each request
                found = await sync_to_async(whitenoise.find_file)(request.path_info)
            else:
                found = whitenoise.files.get(request.path_info)
            if found is not None:
                return await sync_to_async(whitenoise.serve)(found, request)
        return await self.get_response(request)


# No inline script or style anywhere (templates load static files only); sockets go
# to the page's own host (CSP 3 lets 'self' cover ws/wss, older browsers need them
# named).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'{sockets}; worker-src 'self'; object-src 'none';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def content_security_policy(request) -> str:
    """The policy for one response: the sockets it may open are to its own host."""
    try:
        host = request.get_host()
    except DisallowedHost:
        return CONTENT_SECURITY_POLICY.format(sockets="")
    return CONTENT_SECURITY_POLICY.format(sockets=f" ws://{host} wss://{host}")


class ContentSecurityPolicyMiddleware:
    """Content-Security-Policy on every response that has none.

    Left off Django's own debug error pages (DEBUG only), which style and script
    themselves inline.
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        response = await self.get_response(request)
        if "Content-Security-Policy" not in response and not (
            settings.DEBUG and response.status_code in (404, 500)
        ):
            response["Content-Security-Policy"] = content_security_policy(request)
        return response
