"""Sphinx configuration of the HTML book (``make book``).

Built as ``sphinx-build -c book . book/_build/html``: the source folder is the repository, of
which only the home page (``book/index.md``), the chapter guides (``chapters/*.md``) and the
executed notebooks (``notebooks/*.ipynb``) are read; the guides' relative links to notebooks and
source files then work as written. The notebooks are shown with the outputs they were committed
with: nothing is executed. The book reads offline: MathJax is served from the build folder, and
the theme loads no web fonts.
"""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

project = "rlhf-book-jax"
author = "rlhf-book-jax contributors"
copyright = "rlhf-book-jax contributors, MIT licence"

root_doc = "book/index"
extensions = [
    "myst_nb",                    # Markdown (MyST) and notebooks
    "sphinx-mathjax-offline",     # MathJax copied into _static/mathjax, no CDN
    "rlhf_book.textbook.book",    # home-page contents, links to notebooks and source pages
]

# Read only the book's pages; prune every other top-level folder so that Sphinx does not walk
# the virtual environment or the runs.
include_patterns = ["book/*.md", "chapters/*.md", "notebooks/*.ipynb"]
exclude_patterns = sorted(
    p.name for p in ROOT.iterdir() if p.name not in {"book", "chapters", "notebooks"}
) + ["book/_build", "**/.ipynb_checkpoints"]

# MyST and MyST-NB: $...$ and $$...$$ maths, headings as link targets, no execution.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 4
nb_execution_mode = "off"
nb_merge_streams = True

# MathJax 3 from the package sphinx-mathjax-offline, relative to _static/.
mathjax_path = "mathjax/tex-chtml.js"

html_theme = "sphinx_book_theme"
html_title = "RLHF book, from scratch in JAX"
html_static_path = []
html_extra_path = ["_static_root"]   # index.html at the top of the output: opens the home page
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
}
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False

# Links to the rendered source pages (see rlhf_book.textbook.book) use a scheme of their own.
myst_url_schemes = ["http", "https", "mailto", "source"]
