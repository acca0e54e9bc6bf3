"""main_print: one line per launch, however many processes run the same code."""

from metatune.console import is_main_process, main_print


def test_a_single_process_is_the_main_one(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    assert is_main_process()
    main_print("hello", 1)
    assert capsys.readouterr().out == "hello 1\n"


def test_only_rank_zero_prints(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    main_print("hello")
    monkeypatch.setenv("RANK", "0")
    main_print("again")
    assert capsys.readouterr().out == "again\n"
