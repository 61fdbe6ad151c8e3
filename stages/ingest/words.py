"""Word-to-object matching without downloads: which ground-truth object a generated word names.

TAM (``method.md`` §2.4) POS-tags each word with NLTK and lemmatises nouns with WordNet. Neither may be
downloaded here, so this module uses fixed tables instead:

* :func:`normalise_word`: lowercase, strip surrounding punctuation and a possessive ``'s``, remove
  hyphens, then singularise (irregular plurals from a table; ``-ies -> -y``; ``-sses/-shes/-ches/-xes/-zes``
  drop ``-es``; otherwise a final ``s`` is dropped unless the word ends in ``ss``, ``us`` or ``is``).
* :data:`COCO_SYNONYMS`: extra words for the 80 COCO categories (plurals need no entry). TAM's COCO names
  ``ball`` (sports ball) and ``glass`` (wine glass) are aliases of the COCO names.
* :data:`FUNCTION_WORDS`: closed-class English words with their Penn Treebank class.

Matching rule of a word against ``categories`` (name -> label), with priorities (lower wins):

0. the word equals the whole (normalised) name, e.g. "dogs" -> dog, "hotdog" -> hot dog via synonyms;
1. the word is a synonym of the name (:data:`COCO_SYNONYMS`), e.g. "woman" -> person, "tv" ↔ "television";
2. the word equals the name's head noun, its last word, e.g. "table" -> dining table, "ball" -> sports ball;
3. only with ``phrases=True`` (GranDf groundings, TAM anno.json names): the word appears anywhere in the
   phrase, function words excluded, e.g. "red" -> "a red car".

For a reference caption, whose characters the groundings' ``token_positives`` index, :func:`grounding_at`
matches by position instead.

Among candidates of the same priority the smallest label wins (the first grounding of a GranDf caption, the
smaller COCO id). So "dog" names dog (exact, priority 0) and not hot dog (head noun, priority 2), and "bear"
names bear, not teddy bear. Object matches are tried before function words, so a dataset may name a
category with any word.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

#: Penn Treebank classes TAM counts as function words (``eval.py``).
TAM_FUNCTION_CLASSES = frozenset({"CC", "DT", "EX", "MD", "POS", "PRP", "PRP$", "UH", "WDT", "WP", "WP$", "WRB"})
#: TAM's classes plus prepositions (IN), "to" (TO) and auxiliary verbs (AUX).
EXTENDED_FUNCTION_CLASSES = TAM_FUNCTION_CLASSES | {"IN", "TO", "AUX"}

_CLOSED_CLASSES: dict[str, str] = {
    "CC": "and or but nor yet plus either neither",
    "DT": "a an the this that these those some any each every all both no another such",
    "EX": "there",
    "MD": "can could may might must shall should will would cannot",
    "POS": "'s '",
    "PRP": "i you he she it we they me him her us them myself yourself himself herself itself ourselves "
           "yourselves themselves",
    "PRP$": "my your his its our their mine yours hers ours theirs",
    "UH": "oh uh um ah yes hello hi wow okay ok",
    "WDT": "which whatever whichever",
    "WP": "who whom what whoever",
    "WP$": "whose",
    "WRB": "where when why how wherever whenever",
    "IN": "in on at of with by for from into onto over under above below near beside besides behind between "
          "among through across along around against about after before during inside outside upon within "
          "without toward towards beneath underneath off out up down past than like via amid atop",
    "TO": "to",
    "AUX": "is are was were be been being am has have had having do does did",
}
#: Word -> Penn Treebank class of every closed-class word known here (first class listed wins).
FUNCTION_WORDS: dict[str, str] = {}
for _cls, _words in _CLOSED_CLASSES.items():
    for _w in _words.split():
        FUNCTION_WORDS.setdefault(_w, _cls)

#: The 80 COCO categories (2014/2017 names) with extra words that name them; plurals are handled by
#: :func:`normalise_word`.
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "people", "boy", "girl", "child", "kid", "player", "guy", "lady", "gentleman",
               "baby", "toddler", "adult", "teenager", "skier", "surfer", "skateboarder", "snowboarder",
               "rider", "batter", "catcher", "umpire", "pedestrian", "passenger", "tourist", "spectator",
               "student", "worker", "chef", "cook", "officer", "policeman", "soldier", "athlete", "human",
               "individual", "crowd", "couple", "family"),
    "bicycle": ("bike", "cycle"),
    "car": ("automobile", "sedan", "suv", "taxi", "cab"),
    "motorcycle": ("motorbike", "scooter", "moped"),
    "airplane": ("plane", "aeroplane", "jet", "aircraft", "airliner"),
    "bus": (),
    "train": ("locomotive", "tram"),
    "truck": ("lorry", "pickup"),
    "boat": ("ship", "sailboat", "kayak", "canoe", "yacht", "ferry"),
    "traffic light": ("stoplight",),
    "fire hydrant": ("hydrant",),
    "stop sign": (),
    "parking meter": (),
    "bench": (),
    "bird": ("pigeon", "seagull", "gull", "duck", "parrot", "goose", "swan", "owl"),
    "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup"),
    "horse": ("pony", "foal"),
    "sheep": ("lamb",),
    "cow": ("cattle", "bull", "calf", "ox"),
    "elephant": (),
    "bear": (),
    "zebra": (),
    "giraffe": (),
    "backpack": ("rucksack",),
    "umbrella": ("parasol",),
    "handbag": ("purse", "bag"),
    "tie": ("necktie",),
    "suitcase": ("luggage",),
    "frisbee": (),
    "skis": ("ski",),
    "snowboard": (),
    "sports ball": ("football", "baseball", "basketball", "volleyball", "soccer"),
    "kite": (),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "skateboard": (),
    "surfboard": (),
    "tennis racket": ("racket", "racquet"),
    "bottle": (),
    "wine glass": ("wineglass",),
    "cup": ("mug",),
    "fork": (),
    "knife": (),
    "spoon": (),
    "bowl": (),
    "banana": (),
    "apple": (),
    "sandwich": ("burger", "hamburger"),
    "orange": (),
    "broccoli": (),
    "carrot": (),
    "hot dog": ("hotdog",),
    "pizza": (),
    "donut": ("doughnut",),
    "cake": ("cupcake",),
    "chair": (),
    "couch": ("sofa",),
    "potted plant": ("houseplant",),
    "bed": (),
    "dining table": (),
    "toilet": (),
    "tv": ("television",),
    "laptop": ("computer",),
    "mouse": (),
    "remote": ("controller",),
    "keyboard": (),
    "cell phone": ("phone", "cellphone", "smartphone"),
    "microwave": (),
    "oven": ("stove",),
    "toaster": (),
    "sink": (),
    "refrigerator": ("fridge",),
    "book": (),
    "clock": (),
    "vase": (),
    "scissors": (),
    "teddy bear": ("teddy",),
    "hair drier": ("hairdryer", "dryer", "drier"),
    "toothbrush": (),
}
#: TAM's short names for two COCO categories (its hard-coded category dict).
COCO_ALIASES: dict[str, str] = {"ball": "sports ball", "glass": "wine glass"}

_IRREGULAR_PLURALS: dict[str, str] = {
    "men": "man", "women": "woman", "people": "person", "persons": "person", "children": "child",
    "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "knives": "knife",
    "leaves": "leaf", "wolves": "wolf", "shelves": "shelf", "loaves": "loaf", "calves": "calf",
    "scarves": "scarf", "halves": "half", "wives": "wife", "lives": "life", "buses": "bus",
    "gentlemen": "gentleman", "policemen": "policeman", "cacti": "cactus", "potatoes": "potato",
    "tomatoes": "tomato", "glasses": "glass",
}
#: Words ending in "s" that are not plurals of a word without it.
_INVARIANT = frozenset({"series", "species", "scissors", "news", "pants", "jeans", "shorts", "lens"})
_EDGE_PUNCTUATION = re.compile(r"^[^\w']+|[^\w']+$")


def normalise_word(word: str) -> str:
    """Lowercase, strip punctuation, possessive and hyphens, and singularise one word.

    Parameters
    ----------
    word : str

    Returns
    -------
    str
        E.g. ``"Women's" -> "woman"``, ``"T-shirts" -> "tshirt"``, ``"ponies" -> "pony"``,
        ``"benches" -> "bench"``, ``"glasses" -> "glass"``.
    """
    if not isinstance(word, str):
        raise TypeError(f"word: expected str, got {type(word).__name__}")
    w = _EDGE_PUNCTUATION.sub("", word.strip().lower())
    if w.endswith("'s"):
        w = w[:-2]
    w = w.strip("'").replace("-", "")
    if w in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[w]
    if w in _INVARIANT or len(w) <= 2:
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _normalise_name(name: str) -> tuple[str, ...]:
    return tuple(normalise_word(part) for part in name.replace("_", " ").split() if normalise_word(part))


@functools.lru_cache(maxsize=256)
def _lexicon(categories: tuple[tuple[str, int], ...], phrases: bool) -> dict[str, tuple[int, int]]:
    """Normalised word -> (priority, label), keeping the best candidate per word."""
    best: dict[str, tuple[int, int]] = {}

    def offer(key: str, priority: int, label: int) -> None:
        if key and (key not in best or (priority, label) < best[key]):
            best[key] = (priority, label)

    for name, label in categories:
        parts = _normalise_name(name)
        if not parts:
            continue
        offer(" ".join(parts), 0, label)
        offer("".join(parts), 0, label)  # "hotdog", "cellphone", "hairdrier"
        coco = COCO_ALIASES.get(name.strip().lower(), name.strip().lower())
        for synonym in COCO_SYNONYMS.get(coco, ()):
            offer(normalise_word(synonym), 1, label)
        offer(parts[-1], 2, label)
        if phrases:
            for part in parts[:-1]:
                if part not in FUNCTION_WORDS:
                    offer(part, 3, label)
    return best


def classify_word(
    word: str,
    categories: Mapping[str, int],
    *,
    phrases: bool = False,
    function_classes: frozenset[str] = TAM_FUNCTION_CLASSES,
) -> tuple[str, int | None]:
    """Classify a generated word as an object name, a function word or other.

    Parameters
    ----------
    word : str
        One generated word (sub-tokens already joined).
    categories : mapping of str to int
        Object name or grounding phrase -> label in the sample's semantic mask (COCO category ids; the
        synthetic shapes; GranDf object index + 1).
    phrases : bool, default False
        Whether the names are free-text phrases (GranDf, TAM anno.json) rather than category names; adds
        rule 3 of the module docstring (the word appears in the phrase).
    function_classes : frozenset of str, default TAM_FUNCTION_CLASSES
        Penn Treebank classes counted as function words; :data:`EXTENDED_FUNCTION_CLASSES` adds
        prepositions, "to" and auxiliaries.

    Returns
    -------
    tuple
        ``("object", label)``, ``("function", None)`` or ``("other", None)``.

    Examples
    --------
    >>> classify_word("Women", {"person": 1, "dog": 18})
    ('object', 1)
    >>> classify_word("the", {"person": 1})
    ('function', None)
    """
    if not isinstance(categories, Mapping):
        raise TypeError(f"categories: expected a mapping of name -> label, got {type(categories).__name__}")
    key = normalise_word(word)
    items = tuple(sorted((str(name), int(label)) for name, label in categories.items()))
    hit = _lexicon(items, bool(phrases)).get(key)
    if hit is not None:
        return ("object", hit[1])
    lowered = _EDGE_PUNCTUATION.sub("", word.strip().lower())
    if FUNCTION_WORDS.get(lowered) in function_classes:
        return ("function", None)
    return ("other", None)


def grounding_at(start: int, end: int, spans: Sequence[tuple[int, int, int]]) -> int | None:
    """The grounding a character span of the *reference* caption lies in (GranDf ``token_positives``).

    For a teacher-forced reference caption the position decides, not the spelling: a word at characters
    ``[start, end)`` belongs to the first grounding whose ``[char_start, char_end)`` overlaps it.

    Parameters
    ----------
    start, end : int
        The word's character span in the caption, ``start < end``.
    spans : sequence of (char_start, char_end, label)
        The groundings' ``token_positives`` and labels, e.g. from ``Sample.objects``.

    Returns
    -------
    int or None
        The label, or None when no grounding overlaps.
    """
    if not 0 <= start < end:
        raise ValueError(f"start, end: expected 0 <= start < end, got [{start}, {end})")
    for char_start, char_end, label in spans:
        if start < char_end and char_start < end:
            return int(label)
    return None
