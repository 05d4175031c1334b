"""The QEMU references scenarios are held against, and the conformance step of the verdict.

The references recorded here (`record-trace qemu NAME`) ship inside the package, in
conformance/qemu/references/ (NAME.yaml, NAME.allowances.yaml, NAME.log), so that `check` and
`diff` work from a plain `pip install`. A scenario names one of them, or a reference file of its
own project; its allowances are the file its record names, else the one beside the reference.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from conformance.compare.allowances import Allowances, allowances_beside, load_allowances
from conformance.compare.conformance import ConformanceResult, compare_with_reference
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
from conformance.model.scenarios import Scenario
from conformance.snapshot.store import read_document

# Where the shipped references are in kvm-conformance's own source tree, where they are recorded.
REFERENCES_IN_SOURCE = Path("conformance/qemu/references")


class UnknownReferenceError(ConformanceError):
    """A reference name that no shipped reference has."""


def shipped_references() -> Path:
    """The directory of the references that ship with the package."""
    return Path(str(resources.files("conformance.qemu").joinpath("references")))


def shipped_reference_names(directory: Path | None = None) -> list[str]:
    found = directory if directory is not None else shipped_references()
    return sorted(
        path.name.removesuffix(".yaml")
        for path in found.glob("*.yaml")
        if not path.name.endswith(".allowances.yaml")
    )


def shipped_reference(name: str, directory: Path | None = None) -> Path:
    """The file of the reference called `name` (in `directory`, by default the shipped ones)."""
    found = (directory if directory is not None else shipped_references()) / f"{name}.yaml"
    if not found.is_file():
        known = ", ".join(shipped_reference_names(directory)) or "none"
        raise UnknownReferenceError(f"no QEMU reference named {name!r} (shipped: {known})")
    return found


def reference_file(scenario: Scenario, directory: Path | None = None) -> Path | None:
    """Where the reference `scenario` is held against is; None when it has none. A shipped
    reference is looked up in `directory` when given (`check --references DIR`)."""
    if isinstance(scenario.reference, Path):
        return scenario.reference
    if scenario.reference is None:
        return None
    return shipped_reference(scenario.reference, directory)


def judge_against_reference(
    scenario: Scenario, document: TraceDocument, references: Path | None = None
) -> ConformanceResult | None:
    """None when the scenario has no QEMU reference (hello, hello-long, exits-100k)."""
    path = reference_file(scenario, references)
    if path is None:
        return None
    return compare_with_reference(
        document, read_document(path), scenario_allowances(scenario, path)
    )


def scenario_allowances(scenario: Scenario, reference: Path) -> Allowances:
    allowances_path = scenario.allowances or allowances_beside(reference)
    return load_allowances(allowances_path) if allowances_path.exists() else Allowances()
