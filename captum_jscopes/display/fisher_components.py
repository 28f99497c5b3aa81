"""The picture of the Fisher Scope's spectral view
(:class:`~captum_jscopes.fisher.components.FisherComponents`): one heat strip per
eigen-direction of F over the input tokens."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from captum_jscopes.display.fonts import drawable_labels, use_fonts
from captum_jscopes.core.text import prompt_labels

__all__ = ["plot_components"]


def plot_components(found: Any, tokenizer: Any, input_ids: Tensor, path=None, row: int = 0,
                    n_tokens: int = 3):
    """A picture with one row per direction: its heat strip over the input tokens
    (``token_scores``, each token's part of the direction) and, as the row title,
    the line of :func:`~captum_jscopes.fisher.components.describe`.

    Args:
        found: the spectral view of ``input_ids`` (the scope's ``components``).
        tokenizer: decodes the tokens (None: ids are shown).
        input_ids: (seq,) or (B, seq), the prompt(s) ``found`` was computed on.
        path: save the figure there (PNG etc., 120 dpi). Default None: not saved.
        row: which prompt of the batch. Default 0.
        n_tokens: raised/lowered vocabulary tokens named per direction. Default 3.
    Returns:
        the matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    # readable labels (the tokens of one character named once) in fonts for every script
    labels, lines = drawable_labels([prompt_labels(ids[row], tokenizer), found.describe(tokenizer, ids, row, n_tokens)])
    k = found.values.shape[1]
    width = max(6.0, 0.32 * len(labels))
    with use_fonts():
        fig, axes = plt.subplots(k, 1, figsize=(width, 1.3 * k + 0.6), squeeze=False)
        for i, ax in enumerate(axes[:, 0]):
            scores = found.token_scores[row, i].float().cpu()
            ax.imshow(scores[None].numpy(), aspect="auto", cmap="Reds", vmin=0)
            ax.set_yticks([])
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=90, fontsize=7)
            ax.set_title(lines[i], fontsize=8, loc="left")
        fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
