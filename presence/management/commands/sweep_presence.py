"""`manage.py sweep_presence [--loop --interval 15]`: the presence sweeper."""

import asyncio
import logging

from django.conf import settings
from django.core.management.base import BaseCommand

from presence.services import presence_sweep

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Drop dead sockets (also those of a server process that died), apply away and "
        "offline transitions, and broadcast the resulting presence events."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="keep sweeping")
        parser.add_argument(
            "--interval",
            type=float,
            default=settings.VOICEFLOW["PRESENCE_SWEEP_INTERVAL"],
            help="seconds between sweeps with --loop",
        )

    def handle(self, *args, loop=False, interval=15, **options):
        if not settings.REDIS_URL:
            # Embedded presence lives in the web process's memory; it sweeps itself.
            self.stdout.write(
                "embedded mode (no REDIS_URL): presence lives in the web process, "
                "which sweeps itself; nothing here to sweep"
            )
            if loop:
                # Stay up: a process manager restarts a sweeper that exits, or stops
                # the whole Procfile with it.
                self.stdout.flush()
                asyncio.run(asyncio.Event().wait())
            return
        asyncio.run(self._sweep(loop, interval))

    async def _sweep(self, loop, interval):
        while True:
            try:
                report = await presence_sweep()
                self.stdout.write(f"presence sweep: {report}")
                self.stdout.flush()
            except Exception:
                if not loop:
                    raise
                logger.exception("presence sweep failed; retrying next interval")
            if not loop:
                return
            await asyncio.sleep(interval)
