"""The gateway's pages: the chat page at ``/`` and the API docs at ``/docs``, both offline.

``pages.install_pages`` mounts them on the app; ``labeling`` is the labeler queue behind
``GET /v1/labeling/next`` (its route is in ``serving/app.py``, beside the other authenticated
routes). Everything a browser loads comes from this package (``static/``: hand-written HTML,
CSS and JavaScript, no build step) or from the ``swagger-ui-bundle-v2`` wheel (Swagger UI's
files), so the pages work on a machine without internet.
"""
