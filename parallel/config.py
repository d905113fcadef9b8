"""ParallelConfig: the (cfg, ring, ulysses) degrees, validated before any work starts."""

from dataclasses import dataclass

from echovideo.errors import EchoVideoInputError


@dataclass(frozen=True)
class ParallelConfig:
    ulysses: int = 1
    ring: int = 1
    cfg: int = 1

    @property
    def sequence(self) -> int:
        """Ranks sharing one sequence (u * r)."""
        return self.ulysses * self.ring

    @property
    def world(self) -> int:
        return self.ulysses * self.ring * self.cfg

    def describe(self) -> str:
        return f"u{self.ulysses} r{self.ring} c{self.cfg}"

    def validate(self, num_heads: int, world_size: int) -> "ParallelConfig":
        for name in ("ulysses", "ring"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise EchoVideoInputError(f"--{name}", f"{value!r} must be a positive integer", "use e.g. 2")
        if self.cfg not in (1, 2):
            raise EchoVideoInputError("--cfg-parallel", f"cfg degree {self.cfg!r} must be 1 or 2",
                                      "CFG has two branches: use 2, or 1 to disable")
        self.check_heads(num_heads, "--ulysses", "--ring")
        if world_size != self.world:
            raise EchoVideoInputError(
                "--ulysses/--ring/--cfg-parallel",
                f"ulysses {self.ulysses} x ring {self.ring} x cfg {self.cfg} = {self.world} ranks, "
                f"but the process group has {world_size}",
                "launch exactly u*r*c processes (torchrun --nproc-per-node) or change the degrees")
        return self

    def check_heads(self, num_heads: int, field: str, ring_field: str) -> None:
        """Ulysses splits the attention heads: its degree must divide them."""
        if num_heads % self.ulysses:
            divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
            raise EchoVideoInputError(field, f"{self.ulysses} does not divide the model's {num_heads} attention heads",
                                      f"use one of {divisors} and put the rest into {ring_field}")

    def check_guidance(self, use_cfg: bool, field: str, fix: str) -> None:
        """CFG parallelism splits the two CFG branches; without CFG (guidance <= 1) half the ranks would only
        repeat the other half's work for the whole run, so it is refused before anything loads."""
        if self.cfg > 1 and not use_cfg:
            raise EchoVideoInputError(field, "CFG parallelism needs CFG, but guidance <= 1 disables it", fix)
