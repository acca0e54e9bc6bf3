#!/usr/bin/env python3
"""Generate metatune's small SYNTHETIC sample dataset in the SEDICI layout (standard library only).

Every document, name, journal and number below is invented: the pools are combined at random
(seeded, so two runs with the same --seed write byte-identical files). Writes
<out>/sample.json ({"training", "validation", "test"}) and <out>/holdout.txt (one more thesis,
drawn with another seed, that is not in the JSON).

    python scripts/make_sample.py [--seed 13] [--out data/sample]

--catalogued writes the same layout, but the catalogued values differ from the page the way a
library cataloguer's do: the page prints names given-name-first (sometimes as initials, with an
honorific; compound surnames such as "de la Fuente"), dates with month names, ordinals and day
ranges, the licence as a URL, a short label or not at all (then the record holds the repository's
default), and the degree as a longer phrase or an abbreviation. --per-type N sets the training
records per type (default 75; validation and test get max(1, N // 7) each, so 6 gives the tiny form):

    python scripts/make_sample.py --catalogued [--per-type 75] [--seed 13] [--out data/sample-catalogued]
"""

from __future__ import annotations

import argparse
import json
import random
import textwrap
from pathlib import Path

UNLP = "Universidad Nacional de La Plata"
FOOTER = "Documento sintético generado para pruebas de metatune"
TYPES = ["Tesis", "Articulo", "Libro", "Objeto de conferencia"]
PER_TYPE = {False: 6, True: 75}  # default training records per type: normal mode, --catalogued

FEMALE = [
    "María Laura",
    "Lucía",
    "Carolina",
    "Valeria",
    "Ana Clara",
    "Florencia",
    "Paula",
    "Silvina",
    "Julieta",
    "Micaela",
]
MALE = ["Juan Pablo", "Martín", "Diego", "Federico", "Santiago", "Gustavo", "Nicolás", "Ramiro", "Hernán", "Tomás"]
FIRST = FEMALE + MALE
LAST = [
    "Ferrandi",
    "Quiroga",
    "Salvatierra",
    "Benavídez",
    "Olmedo",
    "Castellucci",
    "Arrieta",
    "Pereyra",
    "Zanetti",
    "Iturbe",
    "Mansilla",
    "Cabral",
    "Lorenzini",
    "Echeverry",
    "Villagra",
    "Bertolotti",
    "Sosa",
    "Madariaga",
    "Ruggieri",
    "Acosta",
]
# --catalogued only: compound surnames and surnames with particles, drawn along with LAST
LAST_COMPOUND = [
    "de la Fuente",
    "del Valle",
    "García Márquez",
    "Fernández de Córdoba",
    "Pérez Esquivel",
    "de San Martín",
    "de los Santos",
    "Díaz Vélez",
    "López de Zavalía",
    "del Carril",
]
HONORIFICS = ["Dr. ", "Mg. ", "Lic. ", "Ing. ", ""]  # "Dr." becomes "Dra." before a female name

LICENSES = [  # (rights, rightsurl)
    (
        "Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International (CC BY-NC-SA 4.0)",
        "http://creativecommons.org/licenses/by-nc-sa/4.0/",
    ),
    ("Creative Commons Attribution 4.0 International (CC BY 4.0)", "http://creativecommons.org/licenses/by/4.0/"),
    (
        "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0 International (CC BY-NC-ND 4.0)",
        "http://creativecommons.org/licenses/by-nc-nd/4.0/",
    ),
    (
        "Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0)",
        "http://creativecommons.org/licenses/by-sa/4.0/",
    ),
    (
        "Creative Commons Attribution-NonCommercial-ShareAlike 2.5 Argentina (CC BY-NC-SA 2.5)",
        "http://creativecommons.org/licenses/by-nc-sa/2.5/ar/",
    ),
]
DEFAULT_LICENSE = LICENSES[0]  # --catalogued: what the repository records when the page states no licence

# Faculty -> topics and contexts (phrase, keyword), degrees, a journal and an event series
# (first year, name, acronym, cities); editions are numbered from the first year.
FACULTIES = {
    "Facultad de Informática": dict(
        topics=[
            ("la planificación de tareas", "planificación de tareas"),
            ("la detección de anomalías", "detección de anomalías"),
            ("el consumo energético", "eficiencia energética"),
            ("la evaluación de la usabilidad", "usabilidad"),
        ],
        contexts=[
            ("redes definidas por software", "SDN"),
            ("clústeres de procesadores multinúcleo", "computación paralela"),
            ("aplicaciones móviles", "aplicaciones móviles"),
            ("entornos virtuales de aprendizaje", "educación a distancia"),
        ],
        degrees=[
            "Licenciado en Informática",
            "Magister en Redes de Datos",
            "Doctor en Ciencias Informáticas",
            "Especialista en Ingeniería de Software",
        ],
        journal="Cuadernos de Ciencias Informáticas",
        event=(
            1994,
            "Congreso Argentino de Ciencias de la Computación",
            "CACIC",
            ["Río Cuarto", "La Plata", "San Luis"],
        ),
    ),
    "Facultad de Ciencias Exactas": dict(
        topics=[
            ("la síntesis de nanopartículas", "nanopartículas"),
            ("la caracterización óptica", "espectroscopía"),
            ("la degradación de contaminantes", "fotocatálisis"),
            ("la dinámica de fluidos", "mecánica de fluidos"),
        ],
        contexts=[
            ("sistemas acuosos", "química ambiental"),
            ("películas delgadas de óxido de titanio", "óxido de titanio"),
            ("muestras del Río de la Plata", "Río de la Plata"),
        ],
        degrees=["Licenciado en Física", "Licenciado en Química", "Doctor de la Facultad de Ciencias Exactas"],
        journal="Anales de Química y Física Aplicada",
        event=(2001, "Jornadas Argentinas de Física Aplicada", None, ["La Plata", "Tandil"]),
    ),
    "Facultad de Ciencias Económicas": dict(
        topics=[
            ("la recaudación tributaria", "tributación"),
            ("el financiamiento de pequeñas empresas", "pymes"),
            ("la informalidad laboral", "mercado de trabajo"),
            ("la dinámica de los precios relativos", "inflación"),
        ],
        contexts=[
            ("municipios bonaerenses", "provincia de Buenos Aires"),
            ("la economía argentina reciente", "Argentina"),
            ("el sector agroindustrial", "agroindustria"),
        ],
        degrees=[
            "Licenciado en Economía",
            "Magister en Finanzas Públicas Provinciales y Municipales",
            "Contador Público",
        ],
        journal="Revista de Economía Regional",
        event=(1967, "Jornadas Internacionales de Finanzas Públicas", None, ["Córdoba", "La Plata"]),
    ),
    "Facultad de Humanidades y Ciencias de la Educación": dict(
        topics=[
            ("las prácticas de lectura", "lectura"),
            ("la enseñanza de la historia", "enseñanza de la historia"),
            ("la formación docente", "formación docente"),
            ("la memoria colectiva", "memoria"),
        ],
        contexts=[
            ("escuelas secundarias de La Plata", "escuela secundaria"),
            ("la literatura argentina del siglo XX", "literatura argentina"),
            ("comunidades rurales bonaerenses", "ruralidad"),
        ],
        degrees=["Profesor en Historia", "Doctor en Letras", "Magister en Educación"],
        journal="Cuadernos de Educación y Humanidades",
        event=(2005, "Jornadas de Investigación en Educación", None, ["La Plata", "Ensenada"]),
    ),
    "Facultad de Ingeniería": dict(
        topics=[
            ("el diseño de controladores", "control automático"),
            ("el monitoreo estructural", "monitoreo estructural"),
            ("la gestión del agua", "recursos hídricos"),
            ("la simulación térmica", "simulación numérica"),
        ],
        contexts=[
            ("microrredes eléctricas", "energías renovables"),
            ("puentes de hormigón armado", "hormigón"),
            ("la cuenca del río Salado", "río Salado"),
        ],
        degrees=["Ingeniero Electrónico", "Ingeniero Civil", "Doctor en Ingeniería"],
        journal="Revista de Ingeniería Platense",
        event=(2009, "Congreso Argentino de Ingeniería", "CADI", ["Córdoba", "Mar del Plata", "La Plata"]),
    ),
    "Facultad de Ciencias Naturales y Museo": dict(
        topics=[
            ("la diversidad de anfibios", "anfibios"),
            ("el registro fósil de mamíferos", "paleontología"),
            ("la dinámica de sedimentos", "sedimentología"),
            ("la distribución de plantas nativas", "botánica"),
        ],
        contexts=[
            ("humedales de la región pampeana", "región pampeana"),
            ("la Patagonia austral", "Patagonia"),
            ("el litoral bonaerense", "costa bonaerense"),
        ],
        degrees=["Licenciado en Biología", "Doctor en Ciencias Naturales", "Licenciado en Geología"],
        journal="Boletín de Ciencias Naturales del Plata",
        event=(1984, "Jornadas Argentinas de Paleontología de Vertebrados", None, ["La Plata", "Trelew"]),
    ),
    "Facultad de Periodismo y Comunicación Social": dict(
        topics=[
            ("la construcción de la noticia", "periodismo"),
            ("el uso de redes sociales", "redes sociales"),
            ("las radios comunitarias", "radio comunitaria"),
            ("la representación de las juventudes", "juventudes"),
        ],
        contexts=[
            ("medios digitales platenses", "medios digitales"),
            ("la prensa gráfica argentina", "prensa gráfica"),
            ("organizaciones sociales del conurbano", "organizaciones sociales"),
        ],
        degrees=["Licenciado en Comunicación Social", "Doctor en Comunicación", "Magister en Periodismo"],
        journal="Revista Comunicación y Territorio",
        event=(2000, "Jornadas de Investigación en Comunicación", None, ["La Plata", "Rosario"]),
    ),
    "Facultad de Bellas Artes": dict(
        topics=[
            ("las prácticas performáticas", "performance"),
            ("la enseñanza del lenguaje musical", "educación musical"),
            ("el diseño de la identidad visual", "diseño en comunicación visual"),
            ("la producción audiovisual", "cine"),
        ],
        contexts=[
            ("el arte contemporáneo latinoamericano", "arte latinoamericano"),
            ("instituciones culturales de La Plata", "La Plata"),
            ("la escena independiente", "escena independiente"),
        ],
        degrees=["Licenciado en Artes Plásticas", "Doctor en Artes", "Profesor en Música"],
        journal="Revista Arte y Sociedad",
        event=(2002, "Jornadas de Investigación en Arte", None, ["La Plata", "Buenos Aires"]),
    ),
}
# --catalogued: how a page prints each degree of FACULTIES (never the catalogue's spelling itself)
DEGREES_ON_PAGE = {
    "Licenciado en Informática": [
        "Licenciatura en Informática",
        "Lic. en Informática",
        "Licenciatura en Informática de la Facultad de Informática",
    ],
    "Magister en Redes de Datos": ["Maestría en Redes de Datos", "Mg. en Redes de Datos", "Magíster en Redes de Datos"],
    "Doctor en Ciencias Informáticas": [
        "Doctorado en Ciencias Informáticas de la Facultad de Informática",
        "Dr. en Cs. Informáticas",
        "Doctorado en Ciencias Informáticas",
    ],
    "Especialista en Ingeniería de Software": [
        "Especialización en Ingeniería de Software",
        "Esp. en Ing. de Software",
        "Especialización en Ingeniería de Software de la Facultad de Informática",
    ],
    "Licenciado en Física": [
        "Licenciatura en Física",
        "Lic. en Física",
        "Licenciatura en Física de la Facultad de Ciencias Exactas",
    ],
    "Licenciado en Química": ["Licenciatura en Química", "Lic. en Química", "Licenciatura en Ciencias Químicas"],
    "Doctor de la Facultad de Ciencias Exactas": [
        "Doctorado de la Facultad de Ciencias Exactas",
        "Dr. de la Fac. de Cs. Exactas",
        "Doctor/a de la Facultad de Ciencias Exactas (área Química)",
    ],
    "Licenciado en Economía": [
        "Licenciatura en Economía",
        "Lic. en Economía",
        "Licenciatura en Economía de la Facultad de Ciencias Económicas",
    ],
    "Magister en Finanzas Públicas Provinciales y Municipales": [
        "Maestría en Finanzas Públicas Provinciales y Municipales",
        "Mg. en Finanzas Públicas Prov. y Municipales",
        "Magíster en Finanzas Públicas Provinciales y Municipales",
    ],
    "Contador Público": ["Contador/a Público/a", "Cdor. Público", "Contaduría Pública"],
    "Profesor en Historia": [
        "Profesorado en Historia",
        "Prof. en Historia",
        "Profesorado en Historia de la Facultad de Humanidades y Ciencias de la Educación",
    ],
    "Doctor en Letras": [
        "Doctorado en Letras",
        "Dr. en Letras",
        "Doctorado en Letras de la Facultad de Humanidades y Ciencias de la Educación",
    ],
    "Magister en Educación": ["Maestría en Educación", "Mg. en Educación", "Magíster en Educación"],
    "Ingeniero Electrónico": [
        "Ingeniería Electrónica",
        "Ing. Electrónico",
        "Ingeniería en Electrónica de la Facultad de Ingeniería",
    ],
    "Ingeniero Civil": ["Ingeniería Civil", "Ing. Civil", "Ingeniería Civil de la Facultad de Ingeniería"],
    "Doctor en Ingeniería": [
        "Doctorado en Ingeniería",
        "Dr. en Ing.",
        "Doctorado en Ingeniería de la Facultad de Ingeniería",
    ],
    "Licenciado en Biología": [
        "Licenciatura en Biología",
        "Lic. en Biología",
        "Licenciatura en Biología (orientación Zoología)",
    ],
    "Doctor en Ciencias Naturales": [
        "Doctorado en Ciencias Naturales",
        "Dr. en Cs. Naturales",
        "Doctorado en Ciencias Naturales de la Facultad de Ciencias Naturales y Museo",
    ],
    "Licenciado en Geología": [
        "Licenciatura en Geología",
        "Lic. en Geología",
        "Licenciatura en Geología de la Facultad de Ciencias Naturales y Museo",
    ],
    "Licenciado en Comunicación Social": [
        "Licenciatura en Comunicación Social",
        "Lic. en Comunicación Social",
        "Licenciatura en Comunicación Social (orientación Periodismo)",
    ],
    "Doctor en Comunicación": [
        "Doctorado en Comunicación",
        "Dr. en Comunicación",
        "Doctorado en Comunicación de la Facultad de Periodismo y Comunicación Social",
    ],
    "Magister en Periodismo": [
        "Maestría en Periodismo",
        "Mg. en Periodismo",
        "Maestría en Periodismo y Medios de Comunicación",
    ],
    "Licenciado en Artes Plásticas": [
        "Licenciatura en Artes Plásticas",
        "Lic. en Artes Plásticas",
        "Licenciatura en Artes Plásticas de la Facultad de Bellas Artes",
    ],
    "Doctor en Artes": ["Doctorado en Artes", "Dr. en Artes", "Doctorado en Artes de la Facultad de Bellas Artes"],
    "Profesor en Música": [
        "Profesorado en Música",
        "Prof. en Música",
        "Profesorado en Música (orientación Educación Musical)",
    ],
}
TITLE_PATTERNS = [
    "{T} en {c}",
    "Análisis de {t} en {c}",
    "Estudio de {t} en {c}: propuesta y evaluación",
    "Aportes para {t} en {c}",
    "{T} en {c}: un enfoque interdisciplinario",
]
SECOND_SENTENCES = [
    "Se propone un marco metodológico y se lo evalúa mediante casos de estudio.",
    "Los resultados muestran mejoras respecto de los enfoques habituales.",
    "Se discuten las implicancias para futuras investigaciones en el área.",
    "Se combinan métodos cuantitativos y cualitativos sobre datos relevados en la región.",
]
OPENERS = {
    "Tesis": "Esta tesis estudia",
    "Articulo": "Este artículo analiza",
    "Libro": "Este libro reúne trabajos sobre",
    "Objeto de conferencia": "En este trabajo se presenta un estudio de",
}
INTROS = [
    "En las últimas décadas, {t} ha despertado un interés creciente, en particular en {c}, donde los antecedentes son escasos.",
    "El presente trabajo se origina en preguntas surgidas durante la práctica profesional en {c}, vinculadas con {t}.",
]
PUBLISHERS = ["Editorial de la Universidad Nacional de La Plata (EDULP)", "{faculty} (UNLP)"]

# The few documents not in Spanish: (language, faculty, title, abstract, keywords).
FOREIGN = [
    (
        "en",
        "Facultad de Informática",
        "Energy-aware task scheduling on heterogeneous multicore clusters",
        "This paper evaluates three scheduling heuristics that reduce energy use on heterogeneous clusters.",
        ["energy efficiency", "scheduling", "parallel computing"],
    ),
    (
        "en",
        "Facultad de Ciencias Naturales y Museo",
        "Amphibian diversity in wetlands of the Pampean region",
        "We report a two-year survey of amphibian species in five wetlands near La Plata.",
        ["amphibians", "wetlands"],
    ),
    (
        "pt",
        "Facultad de Periodismo y Comunicación Social",
        "Rádios comunitárias e participação cidadã na Argentina",
        "O trabalho analisa a programação de seis rádios comunitárias da província de Buenos Aires.",
        ["rádio comunitária", "participação", "Argentina"],
    ),
]
LABELS = {  # abstract, keywords, licence sentence, licence label, "presented at", per language
    "es": ("Resumen", "Palabras clave", "Esta obra está bajo una licencia", "Licencia", "Trabajo presentado en:"),
    "en": ("Abstract", "Keywords", "This work is licensed under a", "License", "Paper presented at:"),
    "pt": (
        "Resumo",
        "Palavras-chave",
        "Esta obra está licenciada sob uma licença",
        "Licença",
        "Trabalho apresentado em:",
    ),
}
MONTHS = {
    "es": [
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ],
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
    "pt": [
        "janeiro",
        "fevereiro",
        "março",
        "abril",
        "maio",
        "junho",
        "julho",
        "agosto",
        "setembro",
        "outubro",
        "novembro",
        "dezembro",
    ],
}


def roman(n: int) -> str:
    out = ""
    for value, sym in [(50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]:
        while n >= value:
            out, n = out + sym, n - value
    return out


def issn(rng: random.Random) -> str:
    d = [rng.randint(1, 2)] + [rng.randint(0, 9) for _ in range(6)]
    check = (11 - sum(x * w for x, w in zip(d, range(8, 1, -1))) % 11) % 11
    s = "".join(map(str, d)) + ("X" if check == 10 else str(check))
    return f"{s[:4]}-{s[4:]}"


def isbn(rng: random.Random) -> str:
    body = "97895034" + "".join(str(rng.randint(0, 9)) for _ in range(4))
    check = (10 - sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body)) % 10) % 10
    return f"978-950-34-{body[8:]}-{check}"


def people(rng: random.Random, n: int, taken: list[str], catalogued: bool = False) -> list[tuple[str, str]]:
    """n distinct (first, last) pairs whose surnames are not in `taken` (so every role is distinct)."""
    pool = LAST + LAST_COMPOUND if catalogued else LAST
    lasts = rng.sample([s for s in pool if s not in taken], n)
    taken.extend(lasts)
    return [(rng.choice(FIRST), last) for last in lasts]


def initials(first: str) -> str:
    """Given names as initials: "María Laura" -> "M. L."."""
    return " ".join(f"{name[0]}." for name in first.split())


def shown(rng: random.Random, persons, honorific=False, style=None, catalogued=False) -> str:
    """Names as the document prints them: "Nombre Apellido" or "Apellido, Nombre".

    catalogued: a natural-order name is sometimes printed with initials ("M. L. Quiroga"), and an
    author's sometimes with an honorific too."""
    style = style or rng.choice(["natural", "natural", "inverted"])
    if style == "inverted":
        return "; ".join(f"{last}, {first}" for first, last in persons)
    names = []
    for first, last in persons:
        given, with_title = first, honorific
        if catalogued:
            given = initials(first) if rng.random() < 0.15 else first
            with_title = honorific or rng.random() < 0.2
        title = rng.choice(HONORIFICS) if with_title else ""
        names.append(("Dra. " if title == "Dr. " and first in FEMALE else title) + f"{given} {last}")
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " y " + names[-1]


def as_list(persons) -> list[str]:
    return [f"{last}, {first}" for first, last in persons]


def make_date(rng: random.Random, lang: str, precision: str | None = None, catalogued=False) -> tuple[str, str]:
    """(metadata value, how the text shows it)."""
    y, m, d = rng.randint(2010, 2023), rng.randint(1, 12), rng.randint(1, 28)
    precision = precision or rng.choice(["year", "month", "month", "day"])
    if catalogued:
        return catalogued_date(rng, lang, y, m, d, precision)
    month = MONTHS[lang][m - 1]
    if precision == "year":
        return str(y), str(y)
    if precision == "month":
        return f"{y}-{m:02d}", f"{month} {y}" if lang == "en" else f"{month} de {y}"
    return f"{y}-{m:02d}-{d:02d}", f"{month} {d}, {y}" if lang == "en" else f"{d} de {month} de {y}"


def ordinal(d: int) -> str:
    return f"{d}{'th' if 10 <= d <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d % 10, 'th')}"


def catalogued_date(rng: random.Random, lang: str, y: int, m: int, d: int, precision: str) -> tuple[str, str]:
    """--catalogued: (ISO value, how the page words it), with month names, ordinals and day ranges.

    precision "range" is a meeting's days ("3 al 5 de marzo de 2019"), catalogued as the first day."""
    if precision == "year":
        return str(y), str(y)
    if lang == "es" and rng.random() < 0.2:  # some Spanish pages date in English
        lang = "en"
    month = MONTHS[lang][m - 1]
    if precision == "month":
        return f"{y}-{m:02d}", f"{month} {y}" if lang == "en" else f"{month} de {y}"
    if precision == "range":
        d = min(d, 25)
        end = d + rng.randint(1, 3)
        if lang == "en":
            forms = [f"{month} {d}-{end}, {y}", f"{d}-{end} {month} {y}"]
        else:
            from_, to = ("del", "al") if lang == "es" else ("de", "a")
            forms = [f"{d} {to} {end} de {month} de {y}", f"{from_} {d} {to} {end} de {month} de {y}"]
    elif rng.random() < 0.3:  # an ordinal day
        if lang == "en":
            forms = [f"{ordinal(d)} {month} {y}", f"{month} {ordinal(d)}, {y}"]
        else:  # Spanish and Portuguese write an ordinal only for the first of the month
            d = 1
            forms = [f"1º de {month} de {y}"]
    else:
        forms = [f"{month} {d}, {y}", f"{d} {month} {y}"] if lang == "en" else [f"{d} de {month} de {y}"]
    return f"{y}-{m:02d}-{d:02d}", rng.choice(forms)


def catalogued_licence(rng: random.Random, lang: str, rights: str, rightsurl: str) -> str | None:
    """--catalogued: the page shows only the licence's URL, only its short label, or nothing (None)."""
    _, _, lic_sentence, lic_label, _ = LABELS[lang]
    shows = rng.choice(["url", "label", "nothing"])
    if shows == "url":
        return rng.choice([f"{lic_sentence} Creative Commons:\n{rightsurl}", f"{lic_label}: {rightsurl}", rightsurl])
    if shows == "label":
        label = rights[rights.rindex("(") + 1 : -1]  # "CC BY-NC-SA 4.0"
        return rng.choice([f"{lic_sentence} {label}.", f"{lic_label}: {label}", label])
    return None


def make_record(
    rng: random.Random, doc_type: str, lang: str, used_titles: set[str], issns: dict, catalogued: bool = False
) -> dict:
    abs_label, kw_label, lic_sentence, lic_label, presented = LABELS[lang]
    if lang == "es":
        faculty = rng.choice(list(FACULTIES))
        fac = FACULTIES[faculty]
        while True:
            (t, t_kw), (c, c_kw) = rng.choice(fac["topics"]), rng.choice(fac["contexts"])
            title = rng.choice(TITLE_PATTERNS).format(t=t, c=c, T=t[0].upper() + t[1:])
            if title not in used_titles:
                break
            if catalogued:  # the larger dataset can use up one faculty's titles: try another faculty
                faculty = rng.choice(list(FACULTIES))
                fac = FACULTIES[faculty]
        abstract = f"{OPENERS[doc_type]} {t} en {c}. {rng.choice(SECOND_SENTENCES)}"
        keywords = [t_kw, c_kw]
    else:
        _, faculty, title, abstract, keywords = next(f for f in FOREIGN if f[0] == lang and f[2] not in used_titles)
        fac = FACULTIES[faculty]
    used_titles.add(title)
    # --catalogued: names are printed given-name-first, except in about 1 document in 10
    name_style = ("inverted" if rng.random() < 0.1 else "natural") if catalogued else None

    def show(persons, honorific=False, style=None) -> str:
        return shown(rng, persons, honorific, style or name_style, catalogued)

    taken: list[str] = []
    authors = people(rng, 1 if doc_type == "Tesis" else rng.randint(1, 4), taken, catalogued)
    rights, rightsurl = rng.choice(LICENSES)
    rec = {"type": doc_type, "title": title, "creator": as_list(authors)}
    header = rng.choice([f"{UNLP.upper()}\n{faculty.upper()}", f"{UNLP} – {faculty}", f"{faculty}\n{UNLP}"])
    blocks, extra = [], []  # the body by type; then abstract, keywords or the start of the introduction

    if doc_type == "Tesis":
        date, date_text = make_date(rng, lang, catalogued=catalogued)
        degree = rng.choice(fac["degrees"])
        degree_text = rng.choice(DEGREES_ON_PAGE[degree]) if catalogued else degree
        director = people(rng, rng.choice([1, 1, 2]), taken, catalogued)
        codirector = people(rng, 1, taken, catalogued) if rng.random() < 0.4 else []
        rec.update(
            {
                "director": as_list(director),
                **({"codirector": as_list(codirector)} if codirector else {}),
                "degree.name": degree,
                "degree.grantor": UNLP,
            }
        )
        intro = rng.choice(
            [
                "Tesis presentada para obtener el grado de",
                "Trabajo de tesis para optar al título de",
                "Tesis de posgrado –",
            ]
        )
        dirs = [
            f"Director: {show(director, True)}",
            f"Dirección: {show(director, True)}",
            f"Dirigida por {show(director, True, 'natural')}",
        ]
        codir = f"{rng.choice(['Codirector: ', 'Codirección: '])}{show(codirector, True)}" if codirector else None
        lines = [rng.choice(dirs)] + ([codir] if codir else [])
        blocks = [title, f"{rng.choice(['Autor/a: ', 'Tesista: ', ''])}{show(authors)}", f"{intro} {degree_text}"]
        blocks += ["\n".join(lines), f"La Plata, {date_text}"]
    elif doc_type == "Articulo":
        date, date_text = make_date(rng, lang, rng.choice(["year", "year", "month"]), catalogued)
        vol, no = rng.randint(1, 30), rng.randint(1, 4)
        journal = fac["journal"]
        rec.update({"journalTitle": journal, "journalVolumeAndIssue": f"vol. {vol}, no. {no}", "issn": issns[journal]})
        top = rng.choice(
            [
                f"{journal}, vol. {vol}, no. {no} ({date_text})\nISSN {issns[journal]}",
                f"{journal}\nVol. {vol}, Nº {no}, {date_text} – ISSN: {issns[journal]}",
            ]
        )
        header = f"{top}\n{header}"
        blocks = [title, show(authors)]
    elif doc_type == "Libro":
        date, date_text = make_date(rng, lang, "year", catalogued)
        publisher = rng.choice(PUBLISHERS).format(faculty=faculty)
        number = isbn(rng)
        rec.update({"publisher": publisher, "isbn": number})
        blocks = [title, f"{rng.choice(['Autores: ', ''])}{show(authors)}"]
        if rng.random() < 0.5:
            compiler = people(rng, rng.randint(1, 2), taken, catalogued)
            rec["compiler"] = as_list(compiler)
            blocks.append(rng.choice([f"Compilación: {show(compiler)}", f"{show(compiler, style='natural')} (comp.)"]))
        blocks.append(
            rng.choice(
                [f"{publisher}\nLa Plata, {date_text}\nISBN {number}", f"© {date_text} {publisher}\nISBN: {number}"]
            )
        )
    else:  # Objeto de conferencia
        with_month = rng.random() < 0.5  # else the date is only the year inside the event name
        precision = "month" if with_month else "year"
        if catalogued and with_month:  # the meeting's day or days
            precision = rng.choice(["month", "day", "range", "range"])
        date, date_text = make_date(rng, lang, precision, catalogued)
        first, name, acronym, cities = fac["event"]
        year, city = int(date[:4]), rng.choice(cities)
        event = f"{roman(year - first)} {name}{f' ({acronym})' if acronym else ''} ({city}, {year})"
        rec["event"] = event
        line = f"{event}\n{city}, {date_text}" if with_month else f"{presented} {event}"
        if rng.random() < 0.5:
            rec["issn"] = issns[name]
            line += f"\nISSN {rec['issn']}"
        blocks = [title, show(authors), line]
    rec["date"] = date
    rec["language"] = lang
    rec.update({"rights": rights, "rightsurl": rightsurl, "originPlaceInfo": faculty})
    if doc_type != "Tesis":  # an affiliation line right after the authors
        blocks.insert(2, f"{faculty}, {UNLP}" if lang == "es" else f"{faculty}, {UNLP} (Argentina)")
    if lang != "es" or rng.random() < 0.85:
        rec["abstract"] = abstract
        text = textwrap.fill(abstract, 88) if rng.random() < 0.5 else abstract
        extra.append(rng.choice([f"{abs_label}: {text}", f"{abs_label}\n{text}"]))
    if rng.random() < 0.85:
        kws = keywords + ([faculty.split(" de ", 1)[1]] if lang == "es" and rng.random() < 0.4 else [])
        rec["keywords"] = kws
        extra.append(f"{kw_label}: " + rng.choice([", ", "; "]).join(kws))
    if "abstract" not in rec:  # the page then shows the start of the body instead
        extra.append(f"1. Introducción\n{rng.choice(INTROS).format(t=t, c=c)}")
    if catalogued:
        licence = catalogued_licence(rng, lang, rights, rightsurl)
        if licence is None:  # the page states none: the repository records its default
            rec["rights"], rec["rightsurl"] = DEFAULT_LICENSE
    else:
        licence = rng.choice([f"{lic_sentence} {rights}.\n{rightsurl}", f"{lic_label}: {rights} – {rightsurl}"])
    body = [header, *blocks, *extra, *([licence] if licence else []), f"— {FOOTER} —"]
    if rng.random() < 0.3 and licence:  # some PDFs print the licence before the body
        body.remove(licence)
        body.insert(1, licence)
    rec["original_text"] = "\n\n".join(body) + "\n"
    return rec


def title_capacity() -> int:
    """How many distinct Spanish titles the pools make."""
    return len(TITLE_PATTERNS) * sum(len(f["topics"]) * len(f["contexts"]) for f in FACULTIES.values())


def generate(seed: int, per_type: int = PER_TYPE[False], catalogued: bool = False) -> tuple[dict, str]:
    """The splits (per_type training records per type, max(1, per_type // 7) in validation and test) and
    the holdout text."""
    held_out = max(1, per_type // 7)
    sizes = {"training": per_type, "validation": held_out, "test": held_out}
    if len(TYPES) * sum(sizes.values()) + 1 > title_capacity():
        raise ValueError(f"--per-type {per_type} needs more distinct titles than the pools make ({title_capacity()})")
    rng = random.Random(seed)
    issns = {name: issn(rng) for fac in FACULTIES.values() for name in (fac["journal"], fac["event"][1])}
    used: set[str] = set()
    foreign = {("Articulo", 2): "en", ("Objeto de conferencia", 4): "pt", ("Objeto de conferencia", 5): "en"}
    dataset, n = {}, 0
    for split, count in sizes.items():
        dataset[split] = []
        for doc_type in TYPES:
            for i in range(count):
                lang = foreign.get((doc_type, i), "es") if split == "training" else "es"
                rec = make_record(rng, doc_type, lang, used, issns, catalogued)
                n += 1
                slug = doc_type.lower().replace(" ", "-")
                dataset[split].append(
                    {
                        "id": f"synthetic-{slug}-{n:03d}",
                        "type": rec.pop("type"),
                        "original_text": rec.pop("original_text"),
                        **rec,
                    }
                )
    holdout = make_record(random.Random(seed + 1), "Tesis", "es", used, issns, catalogued)
    return dataset, holdout["original_text"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", help="default: data/sample, or data/sample-catalogued with --catalogued")
    parser.add_argument(
        "--catalogued", action="store_true", help="catalogued values differ from the page as a cataloguer's do"
    )
    parser.add_argument(
        "--per-type",
        type=int,
        help="training records per type (default 6, or 75 with --catalogued); validation and test get max(1, N // 7)",
    )
    args = parser.parse_args()
    per_type = PER_TYPE[args.catalogued] if args.per_type is None else args.per_type
    if per_type < 1:
        parser.error("--per-type must be at least 1")
    out = Path(args.out or ("data/sample-catalogued" if args.catalogued else "data/sample"))
    try:
        dataset, holdout = generate(args.seed, per_type, args.catalogued)
    except ValueError as e:
        parser.error(str(e))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sample.json").write_text(json.dumps(dataset, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out / "holdout.txt").write_text(holdout, encoding="utf-8")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in dataset.items())
    print(f"wrote {out / 'sample.json'} ({sizes}) and {out / 'holdout.txt'}")


if __name__ == "__main__":
    main()
