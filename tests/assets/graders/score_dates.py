"""A python grader file for tests/test_graders.py: 1.0 for the exact date, 0.5 for the right year."""

from date_helpers import year  # a neighbour of this file: the worker puts the file's folder on sys.path


def grade_date(sample, item):
    text = sample["output_text"].strip()
    if text == item["answer"]:
        return 1.0
    return 0.5 if year(text) == year(item["answer"]) else 0.0
