"""The web process's uvicorn server: how often it wakes, how soon it exits."""

import asyncio
import signal

import uvicorn

from voiceflow.runtime.server import DrainingServer


async def _app(scope, receive, send):
    pass


def draining_server():
    server = DrainingServer(uvicorn.Config(_app, lifespan="off"))
    server.config.load()
    return server


async def test_the_main_loop_wakes_once_a_second_and_at_once_to_exit():
    server = draining_server()
    ticks = []
    on_tick = server.on_tick

    async def counted(counter):
        ticks.append(counter)
        return await on_tick(counter)

    server.on_tick = counted
    loop = asyncio.get_running_loop()
    main = asyncio.ensure_future(server.main_loop())
    await asyncio.sleep(0.5)  # uvicorn's own would have woken five times by now
    assert len(ticks) == 1
    assert b"date" in dict(server.server_state.default_headers)

    # SIGTERM's handler, from another thread: the main loop is woken all the same.
    asked = loop.time()
    await asyncio.to_thread(server.handle_exit, signal.SIGTERM, None)
    await asyncio.wait_for(main, 1)
    assert loop.time() - asked < 0.2
    assert len(ticks) == 2


async def test_exit_asked_before_the_main_loop_waits_is_not_missed():
    server = draining_server()
    server.should_exit = True
    await asyncio.wait_for(server.main_loop(), 0.2)
