"""Device-wide state shared by the daemon and the units: work_ids, instances, CMM memory, models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from stackflow_openai.emulator.boards import GENERATIONS, Generation
from stackflow_openai.emulator.chain import ChainBus, PortTable, output_url
from stackflow_openai.emulator.engines.base import Engine
from stackflow_openai.emulator.faults import Faults
from stackflow_openai.stackflow.models import ModelDescriptor

if TYPE_CHECKING:
    from stackflow_openai.emulator.units.instance import Instance

__all__ = ["FIRST_WORK_ID", "DeviceState"]

FIRST_WORK_ID = 1000  # llm-sys `config_work_id`
ENGINE_FIELD = "emulator_engine"  # optional descriptor field naming a non-default engine


class DeviceState:
    def __init__(
        self,
        *,
        catalogue: Iterable[ModelDescriptor],
        engine: Engine,
        engines: Mapping[str, Engine],
        cmm_total_kib: int,
        faults: Faults,
        generation: Generation = GENERATIONS["dev"],
    ) -> None:
        self.generation = generation  # how the units behave (tts 1.6 or 1.7, ...)
        self.catalogue = list(catalogue)
        self._models = {d.mode: d for d in self.catalogue}
        self.engine = engine
        self.engines = dict(engines)
        self.cmm_total_kib = cmm_total_kib
        self.faults = faults
        self.prefill_overflows = 0  # emulator statistic, survives `reset` (it is not device state)
        self.next_work_id = FIRST_WORK_ID
        # llm-sys's unit table: every work_id from register_unit to release_unit, loading included.
        self.registry: dict[str, Instance] = {}
        self.ports = PortTable()
        self.bus = ChainBus()  # outputs flowing to linked instances (chain.py)

    def allocate_work_id(self) -> int:
        """One global counter for every unit type; taken before the setup is even validated."""
        number = self.next_work_id
        self.next_work_id += 1
        return number

    def register(self, instance: Instance) -> None:
        """`register_unit`: the work_id and its ports; the first port is the instance's output URL."""
        self.registry[instance.work_id] = instance
        instance.ports = self.ports.allocate()
        instance.out_url = output_url(instance.unit.name, instance.ports[0])

    def release(self, instance: Instance) -> None:
        # Identity check: after a reset the same work_id may already name a newer instance.
        if self.registry.get(instance.work_id) is instance:
            del self.registry[instance.work_id]
            self.ports.free(instance.ports)

    def out_port(self, work_id: str) -> str | None:
        """`sys.sql_select("<work_id>.out_port")`: known from register_unit until release_unit."""
        instance = self.registry.get(work_id)
        return instance.out_url if instance is not None else None

    def forget_everything(self) -> None:
        """`sys.reset`: every service restarts, so instances vanish and numbering starts over."""
        self.registry.clear()
        self.ports.clear()
        self.bus.clear()
        self.next_work_id = FIRST_WORK_ID

    def find_model(self, mode: str) -> ModelDescriptor | None:
        return self._models.get(mode)

    def engine_for(self, model: ModelDescriptor) -> Engine:
        """The default engine, unless the descriptor names another registered one."""
        name = model.raw.get(ENGINE_FIELD)
        if isinstance(name, str) and name in self.engines:
            return self.engines[name]
        return self.engine

    def cmm_used_kib(self) -> int:
        return sum(instance.cmm_kib for instance in self.registry.values())

    def cmm_remain_kib(self) -> int:
        return max(0, self.cmm_total_kib - self.cmm_used_kib())
