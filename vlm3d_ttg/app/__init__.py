"""The web app and HTTP API (`vlm3d-ttg app`): a Gradio page over the same run as `vlm3d-ttg generate`.

`server` builds the page, its API endpoints and the run function; `runs` keeps each run's folder,
the cleanup policy and the cancel tokens. Gradio is an optional dependency (`pip install -e ".[app]"`).
"""
