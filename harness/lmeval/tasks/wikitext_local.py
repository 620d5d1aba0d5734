"""Documents of the `wikitext_local` task: lm-eval's `wikitext` on the bundled WikiText-2 raw test file.

lm-eval's `wikitext` reads EleutherAI/wikitext_document_level (wikitext-2-raw-v1, test), whose loading
script builds one `page` per article from this same file (wiki.test.raw of wikitext-2-raw-v1.zip): it splits
the file at "\\n", starts a page at every line that, with "= = =" and "= =" collapsed and stripped, starts
with "= " and ends with " =" (a top-level heading " = Title = "; section headings " = = Title = = " become
"== Title ==" and do not split), joins each page's lines with "\\n", drops a page that is only whitespace
(the file's first line, " ") and keeps the last page as it is. `pages` applies that rule to the bundled
file, so the documents should be the hub's rows exactly (not checked against the hub: no network here):
62 pages, one per top-level heading; each runs from its heading line up to the "\\n" before the next
heading (no trailing "\\n"), except the last, which ends with the file's final "\\n"; joined with "\\n"
they are the file without its first line " \\n". The one difference from the hub dataset: only the test
split is bundled, so there are no train or validation documents.

The detokenizer and the word and byte counts are lm-eval's own, imported from its `wikitext` task.
"""

from __future__ import annotations

import datasets
from lm_eval.tasks.wikitext.preprocess_wikitext import (  # noqa: F401
    process_results,
    wikitext_detokenizer,
)

from harness.data.dataset import load_text


def pages(text: str) -> list[str]:
    """The articles of a WikiText file, as EleutherAI/wikitext_document_level cuts them."""
    found, lines = [], []
    for line in text.split("\n"):
        collapsed = line.replace("= = =", "===").replace("= =", "==").strip()
        if collapsed.startswith("= ") and collapsed.endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                found.append(page)
            lines = []
        lines.append(line)
    found.append("\n".join(lines))
    return found


def load_docs(**_) -> datasets.DatasetDict:
    """lm-eval's `custom_dataset` hook (called with the task's metadata, which is not needed here)."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"page": pages(load_text().text)})})
