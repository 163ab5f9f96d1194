"""The offline demo: a drawn product catalog, a tiny model trained on it in two stages,
exported, indexed and served with a search page (``make demo``)."""
