from metatune.objectives.generate.json_output import parse_output


def test_clean_json():
    r = parse_output('{"title": "Un estudio", "date": 2019, "open": true}')
    assert r.data == {"title": "Un estudio", "date": 2019, "open": True}
    assert r.error is None and not r.repaired


def test_json_inside_prose_and_fences():
    text = 'Here is the metadata:\n```json\n{"title": "A {curly} title"}\n```\nHope it helps!'
    r = parse_output(text)
    assert r.data == {"title": "A {curly} title"}
    assert not r.repaired


def test_truncated_json_is_repaired():
    r = parse_output('{"title": "Un estudio", "creator": ["Pérez, J')
    assert r.repaired and r.error is None
    assert r.data["title"] == "Un estudio"
    assert r.data["creator"] == ["Pérez, J"]


def test_nuextract_end_marker():
    r = parse_output('<|output|>\n{"title": "Tesis", "keywords": ["a", "b"]}<|end-output|>')
    assert r.data == {"title": "Tesis", "keywords": ["a", "b"]}
    assert not r.repaired


def test_truncated_with_end_marker():
    r = parse_output('{"title": "Tesis", "keywords": ["a", "b"<|end-output|>')
    assert r.repaired
    assert r.data == {"title": "Tesis", "keywords": ["a", "b"]}


def test_garbage_is_an_error():
    for text in ("I could not find any metadata.", "", "{not json at all"):
        r = parse_output(text)
        assert r.data is None, text
        assert r.error and "\n" not in r.error
