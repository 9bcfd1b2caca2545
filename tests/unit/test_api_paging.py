"""api_paging.list_answer: filtering and sorting work on the broker's objects, and only the
page's items are described (what keeps a page of 10,000 queues cheap)."""

from __future__ import annotations

from typing import Any

import pytest

from wharf.broker.http.api_paging import list_answer
from wharf.protocol.errors import WharfError

ITEMS = [(f"q-{i:05d}", i % 7) for i in range(10_000)]
KEYS = {"name": lambda x: x[0], "depth": lambda x: x[1]}


def _answer(query: dict[str, str], built: list[str]) -> Any:
    def build(x: tuple[str, int]) -> dict[str, Any]:
        built.append(x[0])
        return {"name": x[0], "depth": x[1], "nested": {"n": -x[1]}}

    return list_answer(query, ITEMS, build, lambda x: x[0], KEYS)


def test_only_the_page_is_described() -> None:
    built: list[str] = []
    doc = _answer({"page": "2", "page_size": "500", "sort": "depth", "sort_reverse": "true"}, built)
    assert len(built) == 500 and doc["item_count"] == 500
    assert (doc["page_count"], doc["filtered_count"], doc["total_count"]) == (20, 10_000, 10_000)
    assert all(item["depth"] == 6 for item in doc["items"])  # 1,428 queues have depth 6


def test_filter_before_building_and_a_sort_field_without_a_key() -> None:
    built: list[str] = []
    doc = _answer({"page": "1", "name": "Q-0999", "sort": "nested.n"}, built)
    assert doc["filtered_count"] == 10 and len(built) == 10
    assert [i["nested"]["n"] for i in doc["items"]] == sorted(
        i["nested"]["n"] for i in doc["items"]
    )


def test_without_page_the_plain_list() -> None:
    built: list[str] = []
    assert len(_answer({}, built)) == 10_000


@pytest.mark.parametrize(
    "query",
    [{"page": "0"}, {"page": "21", "page_size": "500"}, {"page": "1", "page_size": "501"},
     {"page": "1", "name": "[", "use_regex": "true"}],
)  # fmt: skip
def test_bad_values_are_invalid_argument(query: dict[str, str]) -> None:
    with pytest.raises(WharfError) as info:
        _answer(query, [])
    assert info.value.code == 400
