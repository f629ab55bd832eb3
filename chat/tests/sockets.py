"""Socket test helpers: a communicator that can ignore presence traffic."""

import asyncio
import json

from channels.testing import WebsocketCommunicator

PRESENCE_EVENTS = {"presence", "member_joined", "member_left", "typing"}


def is_presence_event(output):
    if output.get("type") != "websocket.send" or "text" not in output:
        return False
    try:
        return json.loads(output["text"]).get("type") in PRESENCE_EVENTS
    except (ValueError, AttributeError):
        return False


class QuietCommunicator(WebsocketCommunicator):
    """Skips presence, member and typing events: for tests about something else."""

    async def receive_output(self, timeout=1):
        while True:
            output = await super().receive_output(timeout)
            if not is_presence_event(output):
                return output

    async def receive_nothing(self, timeout=0.1, interval=0.01):
        await asyncio.sleep(timeout)
        while not self.output_queue.empty():
            output = self.output_queue.get_nowait()
            if not is_presence_event(output):
                return False
        return await super().receive_nothing(interval, interval)
