"""Our middleware: WhiteNoise that keeps non-static requests on the event loop."""

from asgiref.sync import markcoroutinefunction, sync_to_async
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
