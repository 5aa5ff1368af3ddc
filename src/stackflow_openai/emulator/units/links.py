"""Which upstream outputs an instance subscribes to, and which of its handlers gets them.

Each unit walks its setup `input` list, and the data of a `link`, through an if/else chain of
substring tests (first match wins): e.g. the llm's setup sends an input containing "llm" to user
inference, one containing "asr" or "whisper" to `task_asr_data`, one containing "kws" to `kws_awake`
(`dev:projects/llm_framework/main_llm/src/main.cpp` 685-702), while its `link` knows only "asr" and
"kws" (730-742). A unit's `setup_routes` and `link_routes` are those chains: (tags, handler) pairs where
the handler names an Instance method taking (object, data), `USER` is the user-inference input (handled
by `Instance.deliver`), and None is accepted but fed by nothing the emulator has (kws, camera,
microphone, vad units).

Only a work_id (`\\w+\\.\\d+`) is subscribed: llm-sys is asked for its `.out_port` (`subscriber_work_id`,
`StackFlow.cpp` 54-80); an unknown one makes `link` answer -20 and is ignored by setup. A bare name
(`"kws"`) would subscribe the unit's own user-inference URL with that handler; the emulator does not
model that and keeps such inputs as bookkeeping.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stackflow_openai.emulator.chain import ChainHandler
    from stackflow_openai.emulator.units.instance import Instance

__all__ = ["USER", "Route", "link_input", "pick_route", "subscribe_setup_inputs", "unlink_input"]

USER = "user input"
Route = tuple[tuple[str, ...], str | None]
INSTANCE_ID = re.compile(r"(\w+)\.(\d+)")


def pick_route(routes: tuple[Route, ...], source: str) -> Route | None:
    for route in routes:
        if any(tag in source for tag in route[0]):
            return route
    return None


def _handler(instance: Instance, route: Route) -> ChainHandler | None:
    name = route[1]
    if name is None or name == USER:
        return None
    handler: ChainHandler = getattr(instance, name)
    return handler


async def _subscribe(instance: Instance, work_id: str, handler: ChainHandler) -> bool:
    """`subscriber_work_id`: False (the device's -1) when llm-sys knows no such work_id."""
    match = INSTANCE_ID.fullmatch(work_id)
    state = instance.unit.state
    url = state.out_port(work_id) if match else None
    if match is None or url is None:
        return False
    await state.bus.subscribe(instance, int(match.group(2)), url, handler)
    return True


async def subscribe_setup_inputs(instance: Instance) -> None:
    """At the end of a successful setup; a failed subscription is ignored (setup still succeeds)."""
    for source in instance.inputs:
        route = pick_route(instance.unit.setup_routes, source)
        handler = _handler(instance, route) if route is not None else None
        if handler is not None:
            await _subscribe(instance, source, handler)


async def link_input(instance: Instance, data: str) -> bool:
    """`link`: True for success. The device adds `data` to the inputs whenever a tag matched, even when
    the subscription then fails (main_llm 730-742, main_melotts 711-725)."""
    route = pick_route(instance.unit.link_routes, data)
    if route is None:
        return False  # no tag matched: `ret` stays 1
    instance.inputs.append(data)
    if not INSTANCE_ID.fullmatch(data):
        return True  # a bare name: the unit's own inference URL, always there
    handler = _handler(instance, route)
    if handler is None:
        return instance.unit.state.out_port(data) is not None
    return await _subscribe(instance, data, handler)


async def unlink_input(instance: Instance, data: str) -> None:
    """`unlink`: `stop_subscriber_work_id` then drop `data` from the inputs; always answered 0."""
    match = INSTANCE_ID.fullmatch(data)
    if match is None:
        # Anything that is not a work_id maps to slot 0, the user-input subscription, which goes.
        instance.user_subscribed = False
    else:
        await instance.unit.state.bus.unsubscribe(instance, int(match.group(2)))
    instance.inputs = [i for i in instance.inputs if i != data]
