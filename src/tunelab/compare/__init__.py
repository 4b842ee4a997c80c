"""Strategies side by side: a grid of runs (`grid`), its report (`results`, `claims`, `plots`, `page`), and the
selection guide (`advisor`)."""
