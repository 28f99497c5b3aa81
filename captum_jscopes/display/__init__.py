"""Everything drawn or rendered: readable token text, fonts, heatmaps, HTML
pages and the interactive page. Every plot of the package lives here."""
