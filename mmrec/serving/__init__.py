"""Serving: the scoring runtime and the jobs that feed it.

Runtime (reads files; imports no flax, no training code, no job):
service.py (the FastAPI app), requests.py (request models and limits),
state.py (the live model, store and index, hot reloads), rows.py (a request's
model inputs), served_model.py (an exported model version), vector_store.py,
ann_index.py, impression_log.py. Jobs: export.py (a CTR checkpoint -> a
model version; model_export.py holds its programs, layout.py the
directory layout) and nearline.py (impressions -> a fine-tuned version).
"""
