"""Operations endpoints: GET /health and GET /metrics."""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import health as health_report
from . import metrics as metrics_registry


@never_cache
@require_GET
async def health(request):
    status, body = await health_report.report()
    return JsonResponse(body, status=status)


# Loopback and private networks (RFC 1918, IPv6 unique local). Not `is_private`,
# which also counts documentation and other reserved ranges as private.
_TRUSTED_NETWORKS = [
    ipaddress.ip_network(net)
    for net in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::1/128",
        "fc00::/7",
    )
]


def metrics_allowed(request):
    """Loopback and private-network clients; anyone else with the bearer token."""
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        address = None
    if address is not None:
        address = getattr(address, "ipv4_mapped", None) or address
        if any(address in network for network in _TRUSTED_NETWORKS):
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
