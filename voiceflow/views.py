"""Operations endpoints: GET /health and GET /metrics."""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from chat.ratelimit import request_client_ip

from . import health as health_report
from . import metrics as metrics_registry


@never_cache
@require_GET
async def health(request):
    status, body = await health_report.report()
    return JsonResponse(body, status=status)


def metrics_allowed(request):
    """Loopback clients (behind TRUSTED_PROXIES, the forwarded client); anyone else
    with the bearer token. Not private networks: a load balancer on one would make
    every client look private."""
    try:
        address = ipaddress.ip_address(request_client_ip(request))
    except ValueError:
        address = None
    if address is not None:
        address = getattr(address, "ipv4_mapped", None) or address
        if address.is_loopback:
            return True
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(
        header.encode(), f"Bearer {token}".encode()
    )


@never_cache
@require_GET
async def metrics(request):
    if not metrics_allowed(request):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    body, content_type = metrics_registry.render()
    return HttpResponse(body, content_type=content_type)
