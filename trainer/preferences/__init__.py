"""Preference data: pairs from rankings and thumbs, labeler consensus and agreement."""
