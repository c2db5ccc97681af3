"""Rule files as editors save them: BOM, CRLF, other encodings, binary; read alike by `rules check` and the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tripwire.rules.reload import RuleSet
from tripwire.cli.main import main

RULE = 'rule "café"\n  when "Añadir" as a where a.properties.x == "é"\n  post crm\n'


def check(capsys: pytest.CaptureFixture[str], *paths: Path) -> tuple[int, str]:
    code = main(["rules", "check", *map(str, paths)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_byte_order_mark_and_crlf_line_ends_are_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config: the unknown endpoint is a warning
    f = tmp_path / "bom.rules"
    f.write_bytes(b"\xef\xbb\xbf" + RULE.replace("\n", "\r\n").encode())  # Notepad's "UTF-8 with BOM"
    code, text = check(capsys, f)
    assert code == 0 and "1 rule(s) ok" in text, text
    rules = RuleSet(tmp_path)
    rules.scan()
    assert [r.name for r in rules.plan.rules] == ["café"] and not rules.broken()

    f.write_bytes(b'rule "x"\r\n  when A where bogus.price > 3\r\n  post crm\r\n')
    code, text = check(capsys, f)
    assert code == 1
    assert "\r" not in text  # the source line under the message is printed without its CR
    assert "      when A where bogus.price > 3\n                   ^" in text


def test_a_file_that_is_not_utf8_is_rejected_alike_by_check_and_the_engine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "latin1.rules"
    f.write_bytes(RULE.encode("latin-1"))
    code, text = check(capsys, f)
    assert code == 1
    assert f"{f}:1:10: the file is not UTF-8 text (byte 0xe9); save it as UTF-8" in text
    rules = RuleSet(tmp_path)
    rules.scan()
    # the engine used to run it decoded with U+FFFD: event "A\ufffdadir" (never sent) while check said no
    assert rules.plan.rules == () and str(f) in rules.broken()

    binary = tmp_path / "x.rules"
    binary.write_bytes(b'rule "x" when A post crm\x00\x01\x02')
    code, text = check(capsys, binary)
    assert code == 1 and f"{binary}:1:1: the file is binary, not rule text" in text
    assert "\x00" not in text


def test_reload_reports_duplicate_names_and_new_broken_files_as_what_they_are(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tripwire.rules import metrics

    def gauge() -> float:
        return metrics.BROKEN_FILES._value.get()  # type: ignore[attr-defined, no-any-return]

    def errors(name: str) -> float:
        return metrics.RELOAD_ERRORS.labels(file=name)._value.get()  # type: ignore[no-any-return]

    (tmp_path / "a.rules").write_text('rule "dup" when A post crm\n')
    rules = RuleSet(tmp_path)
    rules.scan()
    before = errors("dup-b.rules")
    (tmp_path / "dup-b.rules").write_text('rule "dup" when B post crm\nrule "other" when C post crm\n')
    caplog.clear()
    rules.scan()
    # b's "dup" does not run: that used to be one log line and nothing a dashboard could see
    assert sorted(r.name for r in rules.plan.rules) == ["dup", "other"]
    assert errors("dup-b.rules") == before + 1 and gauge() == 1
    assert any("already defined" in r.getMessage() and "does not run" in r.getMessage() for r in caplog.records)
    (tmp_path / "a.rules").write_text('rule "dup" when A2 post crm\n')  # an unrelated edit: still one error
    rules.scan()
    assert errors("dup-b.rules") == before + 1 and gauge() == 1
    (tmp_path / "dup-b.rules").write_text('rule "dup2" when B post crm\n')
    rules.scan()
    assert gauge() == 0

    caplog.clear()
    (tmp_path / "new.rules").write_text('rule "x" when A then B post crm\n')
    rules.scan()
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "previous version" not in message and "not running" in message  # a new file has no previous version
    assert gauge() == 1
