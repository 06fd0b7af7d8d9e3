"""Processes of a generation run: rank, world size, device, barrier and collective agreement.

Under ``accelerate launch`` / ``torchrun`` plan batch ``b`` goes to process ``b mod N``; the
processes agree on a cancel and on the number of loop rounds through :class:`_Dist`.
"""

from __future__ import annotations

import os


class _Dist:
    """Rank, world size, device and barrier: accelerate's ``PartialState`` or one process."""

    def __init__(self, rank: int = 0, world: int = 1, state=None):
        self.rank, self.world, self.state = rank, world, state

    @classmethod
    def detect(cls) -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:  # launched by accelerate / torchrun
            import torch
            from accelerate import PartialState

            # without a GPU, accelerate sets up gloo (MULTI_CPU) only when asked for the CPU
            st = PartialState(cpu=not torch.cuda.is_available())
            if st.num_processes != world:
                raise RuntimeError(
                    f"launched as {world} processes but accelerate set up {st.num_processes} "
                    f"({st.distributed_type}); check the launcher's settings"
                )
            return cls(st.process_index, st.num_processes, st)
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str | None:
        if self.state is None:
            return None
        dev = self.state.device
        return "cpu" if dev.type == "cpu" else str(dev)

    def barrier(self) -> None:
        if self.state is not None and self.world > 1:
            self.state.wait_for_everyone()

    def _all_reduce_max(self, value: int) -> int:
        """The largest ``value`` over the processes (one collective; alone: ``value``)."""
        if self.state is None or self.world == 1:
            return value
        import torch
        import torch.distributed as tdist

        t = torch.tensor([int(value)], dtype=torch.int64, device=self.state.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on any process (every process must call it)."""
        return bool(self._all_reduce_max(int(flag)))

    def max(self, value: int) -> int:
        """The largest ``value`` over the processes (every process must call it)."""
        return self._all_reduce_max(value)
