"""What one build cycle did (``CycleReport``): VMs built, replaced and
retired per pool, what failed and what is left open; its summary event and
its email form."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class CycleReport:
    token: int
    started_at: float
    finished_at: float = 0.0
    built: Counter[tuple[str, str]] = field(default_factory=Counter)  # (az, flavor)
    replaced: Counter[tuple[str, str]] = field(default_factory=Counter)  # rolled over
    # (az, flavor, why): VMs retired by upkeep (drained, surplus, no_rule)
    retired: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # An earlier leader's builds that could not be settled yet (its agent is
    # still creating the VM, or did not answer): the next cycle, soon, does.
    unsettled: list[str] = field(default_factory=list)
    leadership_lost: bool = False

    @property
    def clean(self) -> bool:
        """Nothing failed or left open: no retry needed before the next interval."""
        return not (self.failed or self.problems or self.unsettled or self.leadership_lost)

    def summary(self) -> dict[str, object]:
        return {
            "token": self.token,
            "duration_s": round(self.finished_at - self.started_at, 3),
            "built": {f"{az}/{flavor}": n for (az, flavor), n in sorted(self.built.items())},
            "replaced": {
                f"{az}/{flavor}": n for (az, flavor), n in sorted(self.replaced.items()) if n
            },
            "retired": {
                f"{az}/{flavor}/{why}": n
                for (az, flavor, why), n in sorted(self.retired.items())
                if n
            },
            "failed": self.failed,
            "problems": self.problems,
            "unsettled": self.unsettled,
            "leadership_lost": self.leadership_lost,
        }

    def render(self) -> tuple[str, str]:
        """An email-ready subject and plain-text body for this cycle."""
        built = sum(self.built.values())
        trouble = len(self.failed) + len(self.problems)
        status = (
            "LEADERSHIP LOST"
            if self.leadership_lost
            else (f"{trouble} problem(s)" if trouble else "ok")
        )
        subject = f"warmcache cycle {self.token}: built {built} VM(s), {status}"
        lines = [subject, "", f"duration: {self.finished_at - self.started_at:.1f} s", ""]
        if self.built:
            lines.append("built:")
            lines += [f"  {az}/{flavor}: {n}" for (az, flavor), n in sorted(self.built.items())]
        if self.retired:
            lines.append("retired:")
            lines += [
                f"  {az}/{flavor} ({why}): {n}"
                for (az, flavor, why), n in sorted(self.retired.items())
            ]
        for title, items in (("failed builds:", self.failed), ("problems:", self.problems)):
            if items:
                lines += ["", title, *(f"  - {item}" for item in items)]
        return subject, "\n".join(lines) + "\n"
