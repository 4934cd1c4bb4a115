def year(text: str) -> str:
    return text[:4]
