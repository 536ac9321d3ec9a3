"""Calibration inputs for the accuracy-recovery ladder (SmoothQuant scales, --keep sensitivity, --recover).

qconv's own texts: multilingual query/document pairs written for qconv, none taken from the validation
samples (``tests/test_quantize.py`` checks they are disjoint). Embedding artifacts see the queries with the
artifact's query instruction prompt and the documents without; rerankers see the pairs through their
template. A user file (``--calibration FILE``) holds one text per line, or ``query<TAB>document``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qconv.errors import QconvError

CALIBRATION_PAIRS: tuple[tuple[str, str], ...] = (
    ("how do solar panels make electricity?", "Photovoltaic cells turn sunlight into a direct current."),
    ("best way to store fresh basil", "Keep basil stems in a glass of water at room temperature."),
    ("what causes the northern lights?", "Charged particles from the sun collide with gases high in the air."),
    ("symptoms of iron deficiency", "Tiredness, pale skin and shortness of breath can point to low iron."),
    ("python read a csv file line by line", "Use csv.reader on an open file object and loop over the rows."),
    ("when was the printing press invented?", "Gutenberg built his movable-type press around 1440 in Mainz."),
    ("how many moons does mars have?", "Mars has two small moons, Phobos and Deimos."),
    ("why do cats purr?", "Cats purr when content, but also to soothe themselves when hurt."),
    ("difference between a virus and bacteria", "Bacteria are living cells; viruses need a host cell to copy."),
    ("how to reset a wifi router", "Hold the reset button for ten seconds until the lights blink."),
    ("怎样才能睡得更好？", "每天固定时间睡觉，睡前一小时不要看手机。"),
    ("北京到上海的高铁要多久", "最快的高铁大约四个半小时就能到达。"),
    ("如何煮出软糯的米饭", "米和水按一比一点二的比例，浸泡半小时后再煮。"),
    ("信用卡逾期会有什么后果", "逾期会产生罚息，并可能影响个人征信记录。"),
    ("comment apprendre une langue rapidement ?", "Parler chaque jour avec des locuteurs natifs aide beaucoup."),
    ("¿cuál es la montaña más alta de África?", "El Kilimanjaro, en Tanzania, mide unos 5.895 metros."),
    ("wie funktioniert eine Wärmepumpe?", "Sie entzieht der Umgebung Wärme und hebt sie auf ein höheres Niveau."),
    ("東京でおすすめの公園は？", "新宿御苑は桜の季節に特に人気があります。"),
    ("как приготовить борщ", "Сварите бульон, добавьте свёклу, капусту и картофель."),
    ("ما هي عاصمة المغرب؟", "الرباط هي عاصمة المملكة المغربية."),
    ("서울에서 가장 유명한 궁궐은?", "경복궁은 조선 왕조의 법궁으로 가장 잘 알려져 있다."),
    ("what is the time complexity of binary search?", "Binary search halves the range each step: O(log n)."),
    ("SELECT rows where a column is null", "Use WHERE column IS NULL; comparing with = NULL never matches."),
    ("quick tips: packing for a 3-day hike!", "Pack layers, 2 litres of water, a map and a headlamp."),
)


def load_calibration(path: str | Path | None) -> tuple[tuple[str, str], ...]:
    """qconv's pairs, or a user's file (one text per line, or query<TAB>document); checked before any work."""
    if path is None:
        return CALIBRATION_PAIRS
    file = Path(path)
    if not file.is_file():
        raise QconvError(f"calibration file {file} does not exist")
    pairs = []
    for line in file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            query, _, document = line.partition("\t")
            pairs.append((query.strip(), document.strip()))
    if not pairs:
        raise QconvError(f"calibration file {file} has no texts")
    return tuple(pairs)


def calibration_source(path: str | Path | None) -> str:
    return f"file {path}" if path else "qconv built-in multilingual pairs (convert/calibration.py), not validation data"


def calibration_batches(art, pairs, batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """ONNX feeds (input_ids, attention_mask) for the pairs, tokenized as the artifact's runtime does."""
    from qconv.runtime.template import pad_batch
    from qconv.tasks import task_of

    sequences, pad_id = task_of(art).calibration_sequences(art, pairs)
    side = art.manifest[art.task]["padding_side"]
    batches = []
    for start in range(0, len(sequences), batch_size):
        ids, mask = pad_batch(sequences[start : start + batch_size], pad_id, side)
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches
