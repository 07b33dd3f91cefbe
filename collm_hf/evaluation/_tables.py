"""Tables as the evaluation code takes them: a `datasets.Dataset` or a plain dict of lists, read the same way."""


def column_names(table) -> list[str]:
    """The column names of a `datasets.Dataset` (`column_names`) or a dict of lists (its keys)."""
    names = getattr(table, "column_names", None)
    return list(names) if names is not None else list(table.keys())


def column(table, name: str, default=None) -> list:
    """Column `name` as a list; `default` when the table lacks it (a `KeyError` naming it when no default)."""
    if name not in column_names(table):
        if default is not None:
            return default
        raise KeyError(f"The table has no {name!r} column (columns: {column_names(table)}).")
    return list(table[name])
