"""/consume-llm as a drop-in for the original SEDICI LLM service: the original orchestrator's
requests, replayed as its client builds them, and answered in its shapes and codes."""

import json

import pytest
from fastapi.testclient import TestClient

from metatune.compat import split_instruction
from metatune.doctypes import TypeRegistry
from metatune.formats import document_record
from metatune.objectives.generate.extractor import Extractor
from metatune.service import create_app

TOKEN = "s3cret-test-token"

# The original orchestrator's prompts, as its constants render them (api/app/orchestrator/app/constants/
# constant.py): a header naming the fields, "Here is a JSON Example format:", the example printed as a
# Python dict (the thesis, article and book examples are one-element tuples there, a trailing comma),
# the closing sentence, then the document with nothing in between.
HEADER = """ Extract the metadata from the text and provide it in JSON format:
You have to extract the metadata:
language, title,  creator, rights, rightsurl, date, originPlaceInfo,isrelatedwith"""
MIDDLE = "Here is a JSON Example format:"
END = "Now, extract the information from the following text and provide it in the specified JSON format:"
RIGHTS = {
    "rights": "Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International (CC BY-NC-SA 4.0)",
    "rightsurl": "http://creativecommons.org/licenses/by-nc-sa/4.0/",
}
JSON_GENERAL = {
    "language": "es",
    "title": "SIMULACIÓN MEDIANTE MODELOS ANALÍTICOS DE ESTELA EN PARQUES EÓLICOS",
    "creator": "['Lazzari, Florencia', 'Otero, Alejandro']",
    **RIGHTS,
    "date": "2018-01-01",
    "originPlaceInfo": "ASADES",
    "isRelatedWith": "http://sedici.unlp.edu.ar/handle/10915/128795",
}
JSON_TESIS = (
    {
        "language": "es",
        "title": "¿Es compatible la producción forestal con la producción forrajera?",
        "creator": "Siccardi, Bárbara",
        **RIGHTS,
        "date": "2023-01-01",
        "originPlaceInfo": "Facultad de Ciencias Agrarias y Forestales",
        "isRelatedWith": "http://sedici.unlp.edu.ar/handle/10915/118764",
        "codirector": "Ing. Agr. Bárbara Heguy",
        "director": "Dra. Carolina Pérez",
        "degree.grantor": "Universidad Nacional de La Plata",
        "degree.name": "Ingeniero Forestal",
    },
)
STARS = {
    "language": "en",
    "creator": "['J.I. Soto', 'S.V. Jeffers', 'D.R.G. Schleicher', 'J.A. Rosales']",
    "title": "Exploring the magnetism of stars using TESS data",
    **RIGHTS,
    "date": "2022-01-01",
    "originPlaceInfo.": "Asociación Argentina de Astronomía",
    "isRelatedWith": "http://sedici.unlp.edu.ar/handle/10915/118464",
}
EVENT = "LXIII Reunión Anual de la Asociación Argentina de Astronomía (Córdoba, 25 al 29 de octubre de 2021)"
JSON_ARTICULO = (
    {
        **STARS,
        "journalTitle": "Boletín de la Asociación Argentina de Astronomía",
        "journalVolumeAndIssue": "Vol. 63",
        "issn": "1669-9521",
        "event": EVENT,
    },
)
JSON_LIBRO = (
    {
        "language": "es",
        "creator": "['Ruiz de Arcaute, Celeste', 'Laborde, Milagros Rosa Raquel']",
        "title": "Genotoxicidad y carcinogénesis",
        **RIGHTS,
        "date": "2021-01-01",
        "originPlaceInfo": "['Facultad de Ciencias Naturales y Museo', 'Facultad de Ciencias Exactas']",
        "isRelatedWith": "http://sedici.unlp.edu.ar/handle/10915/118183",
        "publisher": "Editorial de la Universidad Nacional de La Plata (EDULP)",
        "isbn": "978-950-34-1987-8",
        "compiler": "Pedro Carriquiriborde",
    },
)
JSON_OBJECTO_CONFERENCIA = ({**STARS, "issn": "1669-9521", "event": EVENT},)
PROMPTS = {
    "general": f"{HEADER}{MIDDLE}{JSON_GENERAL}{END}",
    "Tesis": f"{HEADER} ,codirector, director,degree.grantor, degree.name\n{MIDDLE}{JSON_TESIS}{END}",
    "Articulo": f"{HEADER}, journalTitle, journalVolumeAndIssue, issn, event\n{MIDDLE}{JSON_ARTICULO}{END}",
    "Libro": f"{HEADER}, publisher, isbn, compiler\n{MIDDLE}{JSON_LIBRO}{END}",
    "Objeto de conferencia": f"{HEADER}, issn, event\n{MIDDLE}{JSON_OBJECTO_CONFERENCIA}{END}",
}
KEYS_GENERAL = ["creator", "title", "rights", "rightsurl", "date", "originPlaceInfo.", "isRelatedWith"]


def original_consume_llm(client, api_key: str, llm_input: str):
    """What the original client (TypeStrategy.consume_llm) does with the answer: data on 200, else
    the answer and its error's code."""
    r = client.post(
        "/consume-llm",
        json={"text": llm_input},
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    response_json = r.json()
    if r.status_code != 200:
        return response_json, response_json["error"]["code"]
    return response_json["data"], None


def documents() -> dict[str, str]:
    from conftest import SAMPLE

    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return {r["type"]: r["original_text"] for r in data["test"]}


@pytest.mark.parametrize("doc_type", list(PROMPTS))
def test_the_original_prompts_are_recognised(doc_type):
    text = documents().get(doc_type, "Universidad Nacional de La Plata\n\nUn documento cualquiera")
    split = split_instruction(PROMPTS[doc_type] + text, TypeRegistry.load())
    assert split.doc_type == doc_type
    assert split.document == text.strip()
    assert split.instruction.endswith("in the specified JSON format:")


def test_plain_documents_are_left_alone():
    registry = TypeRegistry.load()
    for text in [*documents().values(), "Resultados {a: 1} del ensayo", '{"title": "x"} extract json']:
        assert split_instruction(text, registry).document == text
        assert split_instruction(text, registry).doc_type is None
    # an instruction with nothing after it is not taken for one: the text is all there is
    assert split_instruction(PROMPTS["Tesis"], registry).document == PROMPTS["Tesis"]


def test_other_instructions_name_their_type_or_fields():
    registry = TypeRegistry.load()
    own = f"{registry.types['Tesis'].prompt(['title', 'director'])}\n\nDocumento:\nFacultad de Informática"
    assert split_instruction(own, registry).doc_type == "Tesis"
    assert split_instruction(own, registry).document == "Facultad de Informática"
    fields = 'Extraé en JSON los campos title, issn, event. Ejemplo: {"issn": "1850-2946"}\nTexto: Actas del congreso'
    split = split_instruction(fields, registry)
    assert (split.doc_type, split.document) == ("Objeto de conferencia", "Actas del congreso")


@pytest.fixture(scope="module")
def extractor(tiny_run):
    return Extractor.from_run(tiny_run)


@pytest.fixture(scope="module")
def client(extractor):
    with TestClient(create_app(extractor, token=TOKEN, batch_wait_ms=0)) as c:
        yield c


def test_the_original_client_gets_the_document_extracted_with_its_type(client, extractor):
    text = documents()["Tesis"]
    record = document_record("text", extractor.extract([text], ["Tesis"])[0], extractor)
    assert record["type"] == "Tesis"
    r = client.post(
        "/consume-llm", json={"text": PROMPTS["Tesis"] + text}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    if record["metadata"] is None:  # a tiny random model may write no JSON: then the original's 500
        assert r.status_code == 500
        assert r.json()["error"] == {"code": 500, "message": f"cannot parse json output: {record['error']}"}
    else:
        assert r.status_code == 200
        assert r.json() == {"success": True, "data": record["metadata"], "error": None}
        data, error = original_consume_llm(client, TOKEN, PROMPTS["Tesis"] + text)
        assert error is None and data == record["metadata"]


def test_answers_the_original_client_reads(client, extractor, monkeypatch):
    from metatune.extraction import Extraction

    def extract(texts, types=None, batch_size=8, **kwargs):
        assert texts == ["Facultad de Informática, UNLP. Tesis de Licenciatura."] and types == ["Libro"]
        return [Extraction("Libro", {"date": "2021", "language": "es"}, raw="{...}")]

    monkeypatch.setattr(extractor, "extract", extract)
    data, error = original_consume_llm(
        client, TOKEN, PROMPTS["Libro"] + "Facultad de Informática, UNLP. Tesis de Licenciatura."
    )
    assert error is None and data == {"date": "2021", "language": "es"}  # the tiny run's fields
    for key in KEYS_GENERAL:  # check_and_add_missing_keys works on what it gets
        data.setdefault(key, "")

    monkeypatch.setattr(
        extractor,
        "extract",
        lambda texts, *a, **k: [Extraction("general", None, "sin json", "no JSON object in the output")],
    )
    body, code = original_consume_llm(client, TOKEN, PROMPTS["general"] + "Un documento")
    assert code == 500
    assert body == {
        "success": False,
        "data": None,
        "error": {"code": 500, "message": "cannot parse json output: no JSON object in the output"},
    }

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(extractor, "extract", broken)
    body, code = original_consume_llm(client, TOKEN, PROMPTS["Tesis"] + "Una tesis")
    assert code == 500 and body["error"]["message"] == "extraction failed: RuntimeError: simulated device failure"


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"text": ""}, "invalid request: text: String should have at least 1 character"),
        ({"text": "   "}, "invalid request: text: the text is blank"),
        ({}, "invalid request: text: Field required"),
    ],
)
def test_bad_requests_are_the_original_400(client, payload, message):
    r = client.post("/consume-llm", json=payload, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400
    assert r.json() == {"success": False, "data": None, "error": {"code": 400, "message": message}}


def test_a_wrong_token_is_a_401_the_original_client_can_read(client):
    body, code = original_consume_llm(client, "wrong", PROMPTS["Tesis"] + "Una tesis")
    assert code == 401 and body["error"]["message"] == "missing or invalid bearer token"


def test_integration_check_needs_the_token(client):
    assert client.get("/test-integration").status_code == 401
    r = client.get("/test-integration", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json() == {"message": "Integration tests passed"}


def test_service_token_is_the_original_variable(monkeypatch, tiny_run, capsys):
    """SERVICE_TOKEN (the original service's variable) is the token when METATUNE_API_TOKEN is unset."""
    import metatune.service as service

    seen = {}

    class Server:
        def __init__(self, config):
            seen["app"] = config.app

        def run(self, sockets):
            pass

    monkeypatch.delenv("METATUNE_API_TOKEN", raising=False)
    monkeypatch.setenv("SERVICE_TOKEN", TOKEN)
    monkeypatch.setattr("metatune.inference.open_run", lambda *a, **k: _Stub(tiny_run))
    monkeypatch.setattr("uvicorn.Server", Server)
    service.serve(tiny_run, port=0)
    assert "bearer token required (SERVICE_TOKEN is set)" in capsys.readouterr().out
    c = TestClient(seen["app"])
    assert c.get("/test-integration").status_code == 401
    assert c.get("/test-integration", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


class _Stub:
    def __init__(self, run_dir):
        self.run_dir, self.info, self.registry = run_dir, {}, TypeRegistry.load()
        self.default_type, self.device = "general", "cpu"
