#!/usr/bin/env python3
"""Generate metatune's small SYNTHETIC sample dataset in the SEDICI layout (standard library only).

Every document, name, journal and number below is invented: the pools are combined at random
(seeded, so two runs with the same --seed write byte-identical files). Writes
<out>/sample.json ({"training", "validation", "test"}) and <out>/holdout.txt (one more thesis,
drawn with another seed, that is not in the JSON).

    python scripts/make_sample.py [--seed 13] [--out data/sample]
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
SIZES = {"training": 6, "validation": 1, "test": 1}  # records per type and split

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


def people(rng: random.Random, n: int, taken: list[str]) -> list[tuple[str, str]]:
    """n distinct (first, last) pairs whose surnames are not in `taken` (so every role is distinct)."""
    lasts = rng.sample([s for s in LAST if s not in taken], n)
    taken.extend(lasts)
    return [(rng.choice(FIRST), last) for last in lasts]


def shown(rng: random.Random, persons, honorific=False, style=None) -> str:
    """Names as the document prints them: "Nombre Apellido" or "Apellido, Nombre"."""
    style = style or rng.choice(["natural", "natural", "inverted"])
    if style == "inverted":
        return "; ".join(f"{last}, {first}" for first, last in persons)
    names = []
    for first, last in persons:
        title = rng.choice(HONORIFICS) if honorific else ""
        names.append(("Dra. " if title == "Dr. " and first in FEMALE else title) + f"{first} {last}")
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " y " + names[-1]


def as_list(persons) -> list[str]:
    return [f"{last}, {first}" for first, last in persons]


def make_date(rng: random.Random, lang: str, precision: str | None = None) -> tuple[str, str]:
    """(metadata value, how the text shows it)."""
    y, m, d = rng.randint(2010, 2023), rng.randint(1, 12), rng.randint(1, 28)
    precision = precision or rng.choice(["year", "month", "month", "day"])
    month = MONTHS[lang][m - 1]
    if precision == "year":
        return str(y), str(y)
    if precision == "month":
        return f"{y}-{m:02d}", f"{month} {y}" if lang == "en" else f"{month} de {y}"
    return f"{y}-{m:02d}-{d:02d}", f"{month} {d}, {y}" if lang == "en" else f"{d} de {month} de {y}"


def make_record(rng: random.Random, doc_type: str, lang: str, used_titles: set[str], issns: dict) -> dict:
    abs_label, kw_label, lic_sentence, lic_label, presented = LABELS[lang]
    if lang == "es":
        faculty = rng.choice(list(FACULTIES))
        fac = FACULTIES[faculty]
        while True:
            (t, t_kw), (c, c_kw) = rng.choice(fac["topics"]), rng.choice(fac["contexts"])
            title = rng.choice(TITLE_PATTERNS).format(t=t, c=c, T=t[0].upper() + t[1:])
            if title not in used_titles:
                break
        abstract = f"{OPENERS[doc_type]} {t} en {c}. {rng.choice(SECOND_SENTENCES)}"
        keywords = [t_kw, c_kw]
    else:
        _, faculty, title, abstract, keywords = next(f for f in FOREIGN if f[0] == lang and f[2] not in used_titles)
        fac = FACULTIES[faculty]
    used_titles.add(title)
    taken: list[str] = []
    authors = people(rng, 1 if doc_type == "Tesis" else rng.randint(1, 4), taken)
    rights, rightsurl = rng.choice(LICENSES)
    rec = {"type": doc_type, "title": title, "creator": as_list(authors)}
    header = rng.choice([f"{UNLP.upper()}\n{faculty.upper()}", f"{UNLP} – {faculty}", f"{faculty}\n{UNLP}"])
    blocks, extra = [], []  # the body by type; then abstract, keywords or the start of the introduction

    if doc_type == "Tesis":
        date, date_text = make_date(rng, lang)
        degree = rng.choice(fac["degrees"])
        director = people(rng, rng.choice([1, 1, 2]), taken)
        codirector = people(rng, 1, taken) if rng.random() < 0.4 else []
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
            f"Director: {shown(rng, director, True)}",
            f"Dirección: {shown(rng, director, True)}",
            f"Dirigida por {shown(rng, director, True, 'natural')}",
        ]
        codir = f"{rng.choice(['Codirector: ', 'Codirección: '])}{shown(rng, codirector, True)}" if codirector else None
        lines = [rng.choice(dirs)] + ([codir] if codir else [])
        blocks = [title, f"{rng.choice(['Autor/a: ', 'Tesista: ', ''])}{shown(rng, authors)}", f"{intro} {degree}"]
        blocks += ["\n".join(lines), f"La Plata, {date_text}"]
    elif doc_type == "Articulo":
        date, date_text = make_date(rng, lang, rng.choice(["year", "year", "month"]))
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
        blocks = [title, shown(rng, authors)]
    elif doc_type == "Libro":
        date, date_text = make_date(rng, lang, "year")
        publisher = rng.choice(PUBLISHERS).format(faculty=faculty)
        number = isbn(rng)
        rec.update({"publisher": publisher, "isbn": number})
        blocks = [title, f"{rng.choice(['Autores: ', ''])}{shown(rng, authors)}"]
        if rng.random() < 0.5:
            compiler = people(rng, rng.randint(1, 2), taken)
            rec["compiler"] = as_list(compiler)
            blocks.append(
                rng.choice([f"Compilación: {shown(rng, compiler)}", f"{shown(rng, compiler, style='natural')} (comp.)"])
            )
        blocks.append(
            rng.choice(
                [f"{publisher}\nLa Plata, {date_text}\nISBN {number}", f"© {date_text} {publisher}\nISBN: {number}"]
            )
        )
    else:  # Objeto de conferencia
        with_month = rng.random() < 0.5  # else the date is only the year inside the event name
        date, date_text = make_date(rng, lang, "month" if with_month else "year")
        first, name, acronym, cities = fac["event"]
        year, city = int(date[:4]), rng.choice(cities)
        event = f"{roman(year - first)} {name}{f' ({acronym})' if acronym else ''} ({city}, {year})"
        rec["event"] = event
        line = f"{event}\n{city}, {date_text}" if with_month else f"{presented} {event}"
        if rng.random() < 0.5:
            rec["issn"] = issns[name]
            line += f"\nISSN {rec['issn']}"
        blocks = [title, shown(rng, authors), line]
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
    licence = rng.choice([f"{lic_sentence} {rights}.\n{rightsurl}", f"{lic_label}: {rights} – {rightsurl}"])
    body = [header, *blocks, *extra, licence, f"— {FOOTER} —"]
    if rng.random() < 0.3:  # some PDFs print the licence before the body
        body.remove(licence)
        body.insert(1, licence)
    rec["original_text"] = "\n\n".join(body) + "\n"
    return rec


def generate(seed: int) -> tuple[dict, str]:
    rng = random.Random(seed)
    issns = {name: issn(rng) for fac in FACULTIES.values() for name in (fac["journal"], fac["event"][1])}
    used: set[str] = set()
    foreign = {("Articulo", 2): "en", ("Objeto de conferencia", 4): "pt", ("Objeto de conferencia", 5): "en"}
    dataset, n = {}, 0
    for split, per_type in SIZES.items():
        dataset[split] = []
        for doc_type in TYPES:
            for i in range(per_type):
                lang = foreign.get((doc_type, i), "es") if split == "training" else "es"
                rec = make_record(rng, doc_type, lang, used, issns)
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
    holdout = make_record(random.Random(seed + 1), "Tesis", "es", used, issns)
    return dataset, holdout["original_text"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", default="data/sample")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset, holdout = generate(args.seed)
    (out / "sample.json").write_text(json.dumps(dataset, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out / "holdout.txt").write_text(holdout, encoding="utf-8")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in dataset.items())
    print(f"wrote {out / 'sample.json'} ({sizes}) and {out / 'holdout.txt'}")


if __name__ == "__main__":
    main()
