"""The pages of Diff-Mix Studio, one module per page.

Each page module exposes ``TITLE`` (its name in the navbar), ``PATH`` (its URL suffix) and
``build(settings=None) -> gr.Blocks``: a standalone ``gr.Blocks`` (made with
:func:`pages.common.page_blocks`) that ``app.py`` renders under ``demo.route(...)`` and that
also runs alone (``python pages/<page>.py``). Pages hand data to each other through
:func:`pages.common.selection_state` (the loaded dataset selection, a plain dict), never
through module globals; :func:`pages.common.open_selection` turns it back into the dataset
and its subset.
"""
