"""Generates src/api/openapi.json, the OpenAPI 3.1 document lathe serves at GET /api/v1/openapi.json.

The JSON is checked in (the C build embeds it with .incbin and needs no Python); this script is its source.
Edit the tables below together with the routes, then run `python3 src/api/openapi.py` (writes the JSON next to
this file; `--check` exits 1 when the checked-in JSON differs). tests/py/test_openapi.py checks that the JSON
matches this script and that the server matches the JSON.
"""
import json, copy

def ref(name): return {"$ref": f"#/components/schemas/{name}"}
def nullable(s):
    s = copy.deepcopy(s)
    if "$ref" in s: return {"anyOf": [s, {"type": "null"}]}
    t = s.get("type")
    if isinstance(t, str): s["type"] = [t, "null"]
    return s
def int_(mn=None, mx=None, default=None, desc=None, null=True, excl_min=None):
    s = {"type": "integer"}
    if mn is not None: s["minimum"] = mn
    if mx is not None: s["maximum"] = mx
    if excl_min is not None: s["exclusiveMinimum"] = excl_min
    if desc: s["description"] = desc
    if null: s = nullable(s)
    if default is not None or null: s["default"] = default
    return s
def num(mn=None, mx=None, excl_min=None, default=None, desc=None, null=True):
    s = {"type": "number"}
    if mn is not None: s["minimum"] = mn
    if mx is not None: s["maximum"] = mx
    if excl_min is not None: s["exclusiveMinimum"] = excl_min
    if desc: s["description"] = desc
    if null: s = nullable(s)
    s["default"] = default
    return s
def str_(maxlen=None, desc=None, null=True, enum=None, default=None, pattern=None):
    s = {"type": "string"}
    if maxlen: s["maxLength"] = maxlen
    if enum: s["enum"] = enum
    if pattern: s["pattern"] = pattern
    if desc: s["description"] = desc
    if null:
        s = nullable(s)
        if enum: s["enum"] = enum + [None]
    if default is not None or null: s["default"] = default
    return s
def obj(props, required=(), extra=False, desc=None):
    s = {"type": "object", "properties": props}
    if required: s["required"] = list(required)
    if not extra: s["additionalProperties"] = False
    if desc: s["description"] = desc
    return s

TS = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC with milliseconds"}
SLUG = "^[a-z0-9][a-z0-9-]{0,62}$"
schemas = {}
schemas["ErrorItem"] = obj({"loc": {"type": "array", "items": {"type": ["string", "integer"]},
                                   "description": "path to the field: starts with body, query, path, header or archive"},
                            "msg": {"type": "string"}, "type": {"type": "string", "enum": [
                                "missing", "extra_forbidden", "type_error", "enum", "greater_than", "greater_than_equal",
                                "less_than_equal", "string_too_long", "string_pattern", "value_error", "not_found"]}},
                           ["loc", "msg", "type"], extra=True)
schemas["Error"] = obj({"code": {"type": "integer"}, "detail": {"type": "string"},
                        "type": {"type": "string", "enum": ["bad_request", "authentication_error", "permission_denied",
                                 "not_found", "method_not_allowed", "conflict", "idempotency_conflict", "payload_too_large",
                                 "validation_error", "upgrade_required", "rate_limited", "quota_exceeded",
                                 "internal_error", "bad_gateway", "service_unavailable", "gateway_timeout"]},
                        "errors": {"type": ["array", "null"], "items": ref("ErrorItem")}},
                       ["code", "detail", "type"], desc="The error envelope of every non-2xx response (SPEC 2.1).")
schemas["DatasetRef"] = obj({"name": {"type": "string", "minLength": 1, "description": "dataset name, optionally 'org/name' (the job's org)"},
                             "version": {"type": "string", "minLength": 1, "description": "explicit semver X.Y.Z"}}, ["name", "version"])
schemas["CapabilityRef"] = obj({"name": {"type": "string", "minLength": 1}, "version": {"type": "string", "minLength": 1}}, ["name", "version"])
RECIPES = ["exact_match_v1", "contains_v1", "row_reward_v1", "trajectory_imitation_v1", "task_verifier_v1",
           "gsm8k_v1", "task_env_verifier_v1", "task_env_agent_v1"]
schemas["RewardRecipe"] = obj({"name": {"type": "string", "enum": RECIPES}, "params": {"type": "object", "default": {}}}, ["name"])
schemas["WorldRewardPolicy"] = obj({"name": {"type": "string"}, "params": {"type": "object", "default": {}}}, ["name"])
REFS = {"type": "array", "items": ref("DatasetRef"), "default": []}

sft = {
    "dataset_ref": nullable(ref("DatasetRef")),
    "trajectory_dataset_refs": dict(REFS, maxItems=16),
    "eval_dataset_ref": nullable(ref("DatasetRef")),
    "max_sequence_length": int_(1, desc="tokens per example; default min(2048, the model's context length); at most the context length"),
    "batch_size": int_(1, 4096, desc="sequences per micro-batch (effective default 16)"),
    "gradient_accumulation_steps": int_(1, 4096, desc="micro-batches per optimizer step (effective default 1)"),
    "learning_rate": num(excl_min=0, mx=1, desc="effective default 1e-4"),
    "steps": int_(1, 10000000, desc="optimizer steps; with epochs: a cap"),
    "epochs": int_(1, 10000, desc="passes over the data; 1 when steps is null too"),
    "lora_rank": int_(1, 512, desc="effective default 16"),
    "lora_alpha": num(excl_min=0, mx=4096, desc="effective default 32; scale = alpha / rank"),
    "checkpoint_interval": int_(1, 10000000, desc="optimizer steps between checkpoints (effective default 10)"),
    "compute": {"type": "string", "enum": ["f32", "bf16"], "default": "f32",
                "description": "precision of the base weights' GEMMs: bf16 = bf16 inputs, f32 accumulation (as PyTorch's CPU autocast)"},
}
schemas["TinkerSFTJobConfig"] = obj(sft, desc="Tinker SFT config. dataset_ref or a non-empty trajectory_dataset_refs is required.")
rl = {
    "algorithm": {"type": "string", "enum": ["importance_sampling", "ppo"]},
    "task_ref": str_(desc="'name' (latest) or 'name@version'"),
    "world_manifest_id": str_(200), "world_runtime_id": str_(200, desc="needs world_manifest_id (R1)"),
    "world_agent_name": str_(200, desc="needs world_runtime_id (R2)"), "world_goal": str_(200),
    "prompt_dataset_ref": nullable(ref("DatasetRef")),
    "trajectory_dataset_refs": REFS,
    "reward_recipe": nullable(ref("RewardRecipe")),
    "world_reward": nullable(ref("WorldRewardPolicy")),
    "execution_mode": {"type": "string", "enum": ["sync", "one_step_off_async", "fully_async"], "default": "sync"},
    "prompt_split": str_(),
    "steps": int_(1, 10000000, desc="effective default 1"),
    "lora_rank": int_(1, 512, desc="effective default 16"),
    "lora_alpha": num(excl_min=0, mx=4096, desc="effective default 32"),
    "learning_rate": num(excl_min=0, mx=1, desc="effective default 1e-4"),
    "max_turns": int_(1, 1000, desc="effective default 8"),
    "max_episode_steps": int_(1, 100000),
    "num_rollouts": int_(1, 65536, desc="rollouts per step; effective default 8"),
    "batch_size": int_(1, desc="prompts per step, at most num_rollouts; effective default min(num_rollouts, 8)"),
    "weight_sync_interval": int_(1, desc="effective default 1"),
    "max_steps_off_policy": int_(1, desc="required when execution_mode is not sync (R4); 1 for one_step_off_async (R5)"),
    "max_new_tokens": int_(1, desc="effective default 128; at most the context length"),
    "temperature": num(mn=0, mx=2, desc="effective default 1.0; 0 = greedy"),
    "stop": {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": 16, "default": None},
    "checkpoint_interval": int_(1, desc="effective default = steps"),
    "eval_dataset_ref": nullable(ref("DatasetRef")),
    "eval_interval": int_(1, desc="needs eval_dataset_ref (R6); effective default 10"),
    "eval_max_rollouts": int_(1, desc="needs eval_dataset_ref (R6); effective default batch_size"),
    "compute": {"type": "string", "enum": ["f32", "bf16"], "default": "f32",
                "description": "precision of the base weights' GEMMs: bf16 = bf16 inputs, f32 accumulation (as PyTorch's CPU autocast)"},
}
schemas["TinkerRLJobConfig"] = obj(rl, ["algorithm"], desc="Tinker RL config, rules R1-R10 of SPEC 4.4.")
grpo = {
    "algorithm": {"type": "string", "enum": ["grpo"], "default": "grpo"},
    "task_ref": {"type": "string", "description": "'name' or 'name@version'"},
    "prompt_dataset_ref": ref("DatasetRef"),
    "reward_recipe": nullable(ref("RewardRecipe")),
    "execution_mode": {"type": "string", "enum": ["async", "colocated", "distributed"], "default": "async"},
    "num_rollouts": int_(1, 65536, desc="group size: samples per prompt; effective default 8"),
    "batch_size": int_(1, 4096, desc="prompts per step; effective default 8"),
    "num_rollout_workers": int_(1, desc="> 1 only with distributed; effective default 1"),
    "buffer_size": int_(1, desc="effective default batch_size"),
    "max_turns": int_(1, 1000), "max_episode_steps": int_(1, 100000),
    "learning_rate": num(excl_min=0, mx=1, desc="effective default 1e-5"),
    "checkpoint_interval": int_(1), "steps": int_(1, 10000000, desc="effective default 1"),
    "compute": {"type": "string", "enum": ["f32", "bf16"], "default": "f32",
                "description": "precision of the base weights' GEMMs: bf16 = bf16 inputs, f32 accumulation (as PyTorch's CPU autocast)"},
}
schemas["RayGRPOJobConfig"] = obj(grpo, ["task_ref", "prompt_dataset_ref"], desc="Ray GRPO config.")
def wrapper(backend, tt, cfg, desc):
    return obj({
        "backend": {"type": "string", "const": backend},
        "trainer_type": {"type": "string", "const": tt},
        "model": {"type": "string", "description": "a catalog tinker_id, or jobs/<job_id>[/checkpoints/<name>]"},
        "capability_ref": ref("CapabilityRef"),
        "config": ref(cfg),
        "name": str_(200),
        "project_ref": str_(desc="a project of the workspace; default: the workspace's default project"),
        "run_ref": str_(200),
        "tags": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1, "maxLength": 64}, "maxItems": 32, "default": []},
    }, ["backend", "trainer_type", "model", "capability_ref", "config"], desc=desc)
schemas["CreateTinkerSFTJobRequest"] = wrapper("tinker", "sft", "TinkerSFTJobConfig", "Create a Tinker SFT job.")
schemas["CreateTinkerRLJobRequest"] = wrapper("tinker", "rl", "TinkerRLJobConfig", "Create a Tinker RL job.")
schemas["CreateRayGRPOJobRequest"] = wrapper("ray", "rl", "RayGRPOJobConfig", "Create a Ray GRPO job.")
schemas["CreateTrainingJobRequest"] = {"oneOf": [ref("CreateTinkerSFTJobRequest"), ref("CreateTinkerRLJobRequest"), ref("CreateRayGRPOJobRequest")],
                                       "description": "One of three bodies, told apart by (backend, trainer_type)."}
schemas["UserIdentity"] = obj({"id": {"type": "string"}, "email": {"type": "string"}, "username": {"type": ["string", "null"]},
                               "full_name": {"type": ["string", "null"]}}, ["id", "email"], extra=True)
schemas["Progress"] = obj({"step": {"type": "integer", "minimum": 0}, "total_steps": {"type": ["integer", "null"]},
                           "fraction": {"type": ["number", "null"]}, "tokens_per_s": {"type": ["number", "null"]},
                           "eta_s": {"type": ["number", "null"]}}, ["step", "total_steps", "fraction", "tokens_per_s", "eta_s"], extra=True)
STR_N = {"type": ["string", "null"]}
job = {
    "id": {"type": "string", "format": "uuid"}, "organization_id": {"type": "string"}, "workspace_id": {"type": "string"},
    "status": {"type": "string", "enum": ["pending", "queued", "running", "completed", "failed", "cancelled"]},
    "name": STR_N, "backend": {"type": "string", "enum": ["tinker", "ray"]}, "trainer_type": {"type": "string", "enum": ["sft", "rl"]},
    "algorithm": {"type": ["string", "null"], "enum": ["grpo", "importance_sampling", "ppo", None]},
    "model": {"type": "string"}, "project_ref": STR_N, "run_ref": STR_N,
    "dataset_ref": nullable(ref("DatasetRef")), "trajectory_dataset_refs": {"type": "array", "items": ref("DatasetRef")},
    "task_ref": STR_N, "world_manifest_id": STR_N, "world_runtime_id": STR_N, "world_agent_name": STR_N, "world_goal": STR_N,
    "prompt_dataset_ref": nullable(ref("DatasetRef")),
    "capability": obj({"artifact_id": STR_N, "name": {"type": "string"}, "version": {"type": "string"}, "runtime_digest": STR_N},
                      ["name", "version"], extra=True),
    "config": {"type": "object", "description": "exactly as submitted"},
    "effective_config": {"type": "object", "description": "config with every default filled in"},
    "metrics": {"type": "object"}, "artifacts": {"type": "object"},
    "tags": {"type": "array", "items": {"type": "string"}}, "error": STR_N,
    "attempt": {"type": "integer", "minimum": 1},
    "created_at": TS, "created_by": STR_N, "created_by_email": STR_N, "created_by_user": nullable(ref("UserIdentity")),
    "started_at": nullable(TS), "completed_at": nullable(TS), "cancel_requested_at": nullable(TS), "updated_at": TS,
    "progress": ref("Progress"),
}
schemas["TrainingJob"] = obj(job, list(job.keys()), extra=True, desc="A training job (SPEC 4.2).")
schemas["TrainingJobList"] = obj({"items": {"type": "array", "items": ref("TrainingJob")}, "total": {"type": "integer", "minimum": 0},
                                  "page": {"type": "integer", "minimum": 1}, "page_size": {"type": "integer", "minimum": 1, "maximum": 100}},
                                 ["items", "total", "page", "page_size"], extra=True)
schemas["TrainingJobLogEntry"] = obj({"seq": {"type": "integer"}, "attempt": {"type": "integer"}, "timestamp": TS,
                                      "level": {"type": "string", "enum": ["debug", "info", "warning", "error"]},
                                      "message": {"type": "string"}, "data": {"type": "object"}},
                                     ["seq", "attempt", "timestamp", "level", "message", "data"], extra=True)
schemas["TrainingJobLogList"] = obj({"items": {"type": "array", "items": ref("TrainingJobLogEntry")},
                                     "next": {"type": ["integer", "null"], "description": "pass as `after` for the next page; null at the end"}},
                                    ["items", "next"], extra=True)
schemas["TrainingJobArtifacts"] = obj({"artifacts": {"type": "object"}}, ["artifacts"], extra=True)
schemas["Checkpoint"] = obj({"name": {"type": "string"}, "step": {"type": "integer"}, "created_at": TS,
                             "size_bytes": {"type": "integer", "minimum": 0}, "digest": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}},
                            ["name", "step", "created_at", "size_bytes", "digest"], extra=True)
schemas["CheckpointList"] = obj({"items": {"type": "array", "items": ref("Checkpoint")}}, ["items"], extra=True)
schemas["TrainingRLContext"] = obj({"capability_entry_prompt": STR_N, "task": {"type": ["object", "null"]}, "world": {"type": ["object", "null"]},
                                    "sampled_trajectory_dataset_ref": STR_N, "reward_recipe": {"type": ["object", "null"]}},
                                   ["capability_entry_prompt", "task", "world", "sampled_trajectory_dataset_ref", "reward_recipe"], extra=True)
schemas["TrainingJobProgressUpdateRequest"] = obj({
    "event_type": {"type": "string", "enum": ["training_start", "step_complete", "eval_complete", "checkpoint_saved", "training_error", "training_end"]},
    "message": str_(), "level": {"type": "string", "enum": ["debug", "info", "warning", "error"], "default": "info"},
    "metrics": {"type": ["object", "null"], "default": {}}, "data": {"type": ["object", "null"], "default": {}},
    "artifacts": {"type": ["object", "null"], "default": None}, "error": str_()}, ["event_type"])
schemas["TrainingModel"] = obj({"tinker_id": {"type": "string"}, "display_name": {"type": "string"},
                                "family": {"type": "string", "enum": ["llama", "qwen", "mistral"]}, "type": {"type": "string", "enum": ["dense", "moe"]},
                                "size_b": {"type": "number", "minimum": 0}, "context_length": {"type": "integer", "minimum": 1},
                                "extended_context": {"type": "boolean"},
                                "supported_algorithms": {"type": "array", "items": {"type": "string", "enum": ["sft", "importance_sampling", "ppo", "grpo"]}},
                                "pricing": {"type": ["object", "null"]},
                                "quantization": {"type": ["string", "null"], "description": "How the weights are stored: a GGUF file's llama.cpp file type (e.g. Q4_1), a model dir's torch_dtype, or null"}},
                               ["tinker_id", "display_name", "family", "type", "size_b", "context_length", "extended_context", "supported_algorithms", "pricing", "quantization"], extra=True)
schemas["TrainingCatalogResponse"] = obj({"models": {"type": "array", "items": ref("TrainingModel")}, "total": {"type": "integer", "minimum": 0},
                                          "limit": {"type": "integer", "minimum": 1, "maximum": 100}}, ["models", "total", "limit"], extra=True)
# artifacts
schemas["ArtifactVersion"] = obj({"name": {"type": "string"}, "version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"},
                                  "digest": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}, "size_bytes": {"type": "integer", "minimum": 0},
                                  "manifest": {"type": "object"}, "splits": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                                  "created_at": TS, "created_by": STR_N},
                                 ["name", "version", "digest", "size_bytes", "manifest", "splits", "created_at", "created_by"], extra=True)
schemas["Artifact"] = obj({"name": {"type": "string"}, "versions": {"type": "array", "items": ref("ArtifactVersion")}}, ["name", "versions"], extra=True)
schemas["ArtifactSummary"] = obj({"name": {"type": "string"}, "latest_version": {"type": "string"}, "latest": ref("ArtifactVersion")},
                                 ["name", "latest_version", "latest"], extra=True)
schemas["ArtifactList"] = obj({"items": {"type": "array", "items": ref("ArtifactSummary")},
                               "total": {"type": "integer", "minimum": 0}, "page": {"type": "integer", "minimum": 1},
                               "page_size": {"type": "integer", "minimum": 1, "maximum": 100}}, ["items", "total", "page", "page_size"], extra=True)
# identity
schemas["OrgRole"] = obj({"id": {"type": "string"}, "key": {"type": "string", "pattern": SLUG}, "name": {"type": "string"},
                          "role": {"type": "string", "enum": ["owner", "contributor", "reader"]}, "created_at": TS},
                         ["id", "key", "name", "role"], extra=True)
schemas["Org"] = obj({"id": {"type": "string"}, "key": {"type": "string", "pattern": SLUG}, "name": {"type": "string"},
                      "role": {"type": "string", "enum": ["owner", "contributor", "reader"]}, "created_at": TS},
                     ["id", "key", "name", "created_at"], extra=True)
schemas["Workspace"] = obj({"id": {"type": "string"}, "key": {"type": "string", "pattern": SLUG}, "name": {"type": "string"},
                            "organization_id": {"type": "string"}, "org": {"type": "string"}, "is_default": {"type": "boolean"},
                            "created_at": TS}, ["id", "key", "name", "is_default", "created_at"], extra=True)
schemas["Project"] = obj({"id": {"type": "string"}, "key": {"type": "string", "pattern": SLUG}, "name": {"type": "string"},
                          "workspace_id": {"type": "string"}, "workspace": {"type": "string"}, "is_default": {"type": "boolean"},
                          "created_at": TS}, ["id", "key", "name", "is_default", "created_at"], extra=True)
schemas["Member"] = obj({"user_id": {"type": "string"}, "email": {"type": "string"}, "username": STR_N, "full_name": STR_N,
                         "role": {"type": "string", "enum": ["owner", "contributor", "reader"]}, "created_at": TS},
                        ["user_id", "email", "role"], extra=True)
schemas["ApiKey"] = obj({"id": {"type": "string"}, "masked_key": {"type": "string"}, "name": {"type": "string"},
                         "org": STR_N, "workspace": STR_N, "scopes": {"type": "array", "items": {"type": "string"}},
                         "created_at": TS, "last_used_at": nullable(TS), "revoked_at": nullable(TS)},
                        ["id", "masked_key", "name", "org", "workspace", "scopes", "created_at"], extra=True)
schemas["User"] = obj({"id": {"type": "string"}, "email": {"type": "string"}, "username": STR_N, "full_name": STR_N,
                       "created_at": TS, "orgs": {"type": "array", "items": ref("OrgRole")}, "api_key": nullable(ref("ApiKey"))},
                      ["id", "email", "orgs"], extra=True, desc="The calling user, the orgs it belongs to with its role in each, and the key in use.")
schemas["ApiKeyCreated"] = obj({"id": {"type": "string"}, "key": {"type": "string", "pattern": "^lk_[0-9A-Za-z]{40}$"}, "masked_key": {"type": "string"},
                                "name": {"type": "string"}, "org": STR_N, "workspace": STR_N, "scopes": {"type": "array", "items": {"type": "string"}},
                                "created_at": TS}, ["id", "key", "masked_key", "name", "org", "workspace", "scopes", "created_at"], extra=True)
SCOPES = ["training:read", "training:write", "artifacts:read", "artifacts:write", "worker"]
schemas["CreateApiKeyRequest"] = obj({"name": {"type": "string", "minLength": 1, "maxLength": 255}, "org": str_(), "workspace": str_(),
                                      "scopes": {"type": ["array", "null"], "items": {"type": "string", "enum": SCOPES}}}, ["name"])
schemas["CreateKeyNameRequest"] = obj({"key": {"type": "string", "pattern": SLUG}, "name": {"type": ["string", "null"], "maxLength": 255}}, ["key"])
schemas["AddMemberRequest"] = obj({"email": {"type": "string"}, "role": {"type": "string", "enum": ["owner", "contributor", "reader"]}}, ["email", "role"])
def listof(name, key="items"):
    if key != "items": return obj({key: {"type": "array", "items": ref(name)}}, [key], extra=True)
    return obj({"items": {"type": "array", "items": ref(name)}, "total": {"type": "integer", "minimum": 0}}, ["items", "total"], extra=True)
# compat
schemas["CompatOrganization"] = obj({"id": {"type": "string"}, "key": {"type": "string"}, "name": {"type": "string"},
                                     "effective_max_sandbox_runtime_seconds": {"type": "integer"}, "max_sandbox_runtime_source_level": {"type": "string"},
                                     "effective_default_sandbox_runtime_seconds": {"type": "integer"}, "default_sandbox_runtime_source_level": {"type": "string"},
                                     "platform_max_sandbox_runtime_seconds": {"type": "integer"}, "platform_default_sandbox_runtime_seconds": {"type": "integer"},
                                     "member_count": {"type": "integer"}, "role": {"type": "string"}, "permissions": {"type": "object"},
                                     "created_at": TS, "updated_at": TS},
                                    ["id", "key", "name", "effective_max_sandbox_runtime_seconds", "max_sandbox_runtime_source_level",
                                     "effective_default_sandbox_runtime_seconds", "default_sandbox_runtime_source_level",
                                     "platform_max_sandbox_runtime_seconds", "platform_default_sandbox_runtime_seconds", "created_at", "updated_at"], extra=True,
                                    desc="The org as the Dreadnode SDK's Organization model reads it.")
schemas["CompatWorkspace"] = obj({"id": {"type": "string"}, "key": {"type": "string"}, "name": {"type": "string"}, "org_id": {"type": "string"},
                                  "org_name": STR_N, "is_active": {"type": "boolean"}, "is_default": {"type": "boolean"},
                                  "project_count": {"type": ["integer", "null"]}, "created_at": TS, "updated_at": TS},
                                 ["id", "key", "name", "org_id", "is_default", "created_at", "updated_at"], extra=True)
schemas["CompatWorkspaceList"] = listof("CompatWorkspace", "workspaces")
schemas["CompatProject"] = obj({"id": {"type": "string"}, "key": {"type": "string"}, "name": {"type": "string"}, "workspace_id": {"type": "string"},
                                "is_default": {"type": "boolean"}, "created_at": TS, "updated_at": TS},
                               ["id", "key", "name", "workspace_id", "is_default", "created_at", "updated_at"], extra=True)

ERR_DESC = {400: "bad request (not JSON, not UTF-8, wrong content type, malformed archive)", 401: "no key, unknown or revoked key",
            403: "role or key scope too low", 404: "not found, or not visible to the caller", 409: "state conflict",
            413: "body over the limit", 422: "validation error: one errors[] item per broken rule", 426: "client older than LATHE_MIN_CLIENT_VERSION",
            429: "rate limit or active-job quota (Retry-After set)", 500: "internal error (names the request id)",
            502: "a backend answered wrongly", 503: "the store does not answer", 504: "a backend did not answer in time"}
responses = {str(k): {"description": v, "content": {"application/json": {"schema": ref("Error")}}} for k, v in ERR_DESC.items()}
responses["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
def errs(*codes): return {str(c): {"$ref": f"#/components/responses/{c}"} for c in codes}
AUTH_ERR = (400, 401, 403, 404, 413, 422, 426, 429, 500)
def ok(status, schema_name=None, desc="OK", ctype="application/json", schema=None, headers=None):
    r = {"description": desc}
    if schema_name or schema:
        r["content"] = {ctype: {"schema": schema or ref(schema_name)}}
    if headers: r["headers"] = headers
    return {str(status): r}
def P(name, desc, schema=None):
    return {"name": name, "in": "path", "required": True, "description": desc, "schema": schema or {"type": "string", "pattern": SLUG}}
def Q(name, schema, desc=""):
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}
ORG, WS = P("org", "organization key"), P("ws", "workspace key")
JOB = P("job_id", "job id (UUID)", {"type": "string", "format": "uuid"})

IDEM = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 255},
        "description": "same key + same body within 24 h returns the first response; a different body is 409 idempotency_conflict"}

paths = {}
def op(path, method, summary, tag, responses_, params=(), body=None, public=False, op_id=None, desc=None):
    o = {"summary": summary, "tags": [tag], "operationId": op_id, "responses": responses_}
    if desc: o["description"] = desc
    if params: o["parameters"] = list(params)
    if body: o["requestBody"] = body
    if public: o["security"] = []
    paths.setdefault(path, {})[method] = o
def jbody(name, required=True):
    return {"required": required, "content": {"application/json": {"schema": ref(name)}}}

# core
op("/healthz", "get", "Liveness", "health", {**ok(200, schema=obj({"status": {"type": "string", "const": "ok"}}, ["status"], extra=True)), **errs(500)}, public=True, op_id="healthz")
op("/readyz", "get", "Readiness: 200 when the store answers", "health",
   {**ok(200, schema={"type": "object"}), **errs(500, 503)}, public=True, op_id="readyz")
op("/metrics", "get", "Prometheus metrics", "health", {**ok(200, ctype="text/plain", schema={"type": "string"}), **errs(500)}, public=True, op_id="metrics")
op("/api/v1/openapi.json", "get", "This document", "health", {**ok(200, schema={"type": "object"}), **errs(500)}, public=True, op_id="openapi")
# identity
op("/api/v1/user", "get", "The calling user, its orgs and roles", "identity", {**ok(200, "User"), **errs(*AUTH_ERR)}, op_id="get_user")
op("/api/v1/user/api-keys", "get", "The user's API keys (masked)", "identity", {**ok(200, schema=listof("ApiKey")), **errs(*AUTH_ERR)}, op_id="list_api_keys")
op("/api/v1/user/api-keys", "post", "Create an API key (the key is shown only here)", "identity",
   {**ok(201, "ApiKeyCreated", "Created"), **errs(*AUTH_ERR, 409)}, body=jbody("CreateApiKeyRequest"), op_id="create_api_key",
   desc="Needs an unrestricted key (all scopes, no org or workspace limit). Idempotency-Key is refused (400): the answer holds the new key, which is never stored.")
op("/api/v1/user/api-keys/{id}", "delete", "Revoke an API key", "identity", {**ok(204, desc="Revoked"), **errs(*AUTH_ERR)},
   params=[P("id", "key id", {"type": "string"})], op_id="revoke_api_key")
op("/api/v1/orgs", "get", "Orgs the user belongs to", "identity", {**ok(200, schema=listof("Org")), **errs(*AUTH_ERR)}, op_id="list_orgs")
op("/api/v1/orgs", "post", "Create an org (the caller becomes owner; workspace main, project default)", "identity",
   {**ok(201, "Org", "Created"), **errs(*AUTH_ERR, 409)}, params=[IDEM], body=jbody("CreateKeyNameRequest"), op_id="create_org")
op("/api/v1/org/{org}/workspaces", "get", "Workspaces of an org", "identity", {**ok(200, schema=listof("Workspace")), **errs(*AUTH_ERR)}, params=[ORG], op_id="list_workspaces")
op("/api/v1/org/{org}/workspaces", "post", "Create a workspace (owner)", "identity", {**ok(201, "Workspace", "Created"), **errs(*AUTH_ERR, 409)},
   params=[ORG, IDEM], body=jbody("CreateKeyNameRequest"), op_id="create_workspace")
op("/api/v1/org/{org}/ws/{ws}/projects", "get", "Projects of a workspace", "identity", {**ok(200, schema=listof("Project")), **errs(*AUTH_ERR)}, params=[ORG, WS], op_id="list_projects")
op("/api/v1/org/{org}/ws/{ws}/projects", "post", "Create a project (owner)", "identity", {**ok(201, "Project", "Created"), **errs(*AUTH_ERR, 409)},
   params=[ORG, WS, IDEM], body=jbody("CreateKeyNameRequest"), op_id="create_project")
op("/api/v1/org/{org}/members", "get", "Members of an org", "identity", {**ok(200, schema=listof("Member")), **errs(*AUTH_ERR)}, params=[ORG], op_id="list_members")
op("/api/v1/org/{org}/members", "post", "Add a member or change a role (owner)", "identity", {**ok(200, "Member"), **ok(201, "Member", "Created"), **errs(*AUTH_ERR, 409)},
   params=[ORG], body=jbody("AddMemberRequest"), op_id="add_member")
op("/api/v1/org/{org}/members/{user_id}", "delete", "Remove a member (owner; not the last owner)", "identity", {**ok(204, desc="Removed"), **errs(*AUTH_ERR, 409)},
   params=[ORG, P("user_id", "user id", {"type": "string"})], op_id="remove_member")
# compat
op("/api/v1/org/{org}", "get", "An org, shaped for the Dreadnode SDK", "compat", {**ok(200, "CompatOrganization"), **errs(*AUTH_ERR)}, params=[ORG], op_id="compat_get_org")
op("/api/v1/org/{org}/ws", "get", "Workspaces, shaped for the Dreadnode SDK", "compat", {**ok(200, "CompatWorkspaceList"), **errs(*AUTH_ERR)}, params=[ORG], op_id="compat_list_ws")
op("/api/v1/org/{org}/ws/{ws}", "get", "A workspace, shaped for the Dreadnode SDK", "compat", {**ok(200, "CompatWorkspace"), **errs(*AUTH_ERR)}, params=[ORG, WS], op_id="compat_get_ws")
op("/api/v1/org/{org}/ws/{ws}/projects/{project}", "get", "A project, shaped for the Dreadnode SDK", "compat", {**ok(200, "CompatProject"), **errs(*AUTH_ERR)},
   params=[ORG, WS, P("project", "project key")], op_id="compat_get_project")
# artifacts
ARCH_BODY = {"required": True, "description": "a tar or tar.gz of the artifact directory, manifest at the root or in one top-level directory",
             "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}, "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}
PAGE = [Q("page", {"type": "integer", "minimum": 1, "default": 1}), Q("page_size", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20})]
for kind, single in (("datasets", "dataset"), ("capabilities", "capability"), ("tasks", "task")):
    base = f"/api/v1/org/{{org}}/{kind}"
    NAME, VER = P("name", f"{single} name", {"type": "string"}), P("version", "semver X.Y.Z", {"type": "string"})
    op(base, "post", f"Push a {single} version (archive body)", "artifacts", {**ok(201, "ArtifactVersion", "Created"), **errs(*AUTH_ERR, 409)},
       params=[ORG], body=ARCH_BODY, op_id=f"push_{single}")
    op(base, "get", f"List {kind} with their latest version", "artifacts", {**ok(200, "ArtifactList"), **errs(*AUTH_ERR)}, params=[ORG] + PAGE, op_id=f"list_{kind}")
    op(base + "/{name}", "get", f"A {single} with all its versions", "artifacts", {**ok(200, "Artifact"), **errs(*AUTH_ERR)}, params=[ORG, NAME], op_id=f"get_{single}")
    op(base + "/{name}/{version}", "get", f"One {single} version", "artifacts", {**ok(200, "ArtifactVersion"), **errs(*AUTH_ERR)}, params=[ORG, NAME, VER], op_id=f"get_{single}_version")
    op(base + "/{name}/{version}", "delete", f"Delete a {single} version (409 while an active job uses it)", "artifacts", {**ok(204, desc="Deleted"), **errs(*AUTH_ERR, 409)},
       params=[ORG, NAME, VER], op_id=f"delete_{single}_version")
    op(base + "/{name}/{version}/download", "get", f"Download a {single} version's archive", "artifacts",
       {"200": {"description": "the archive as pushed", "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}},
                                                                    "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                                                                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        **errs(*AUTH_ERR)}, params=[ORG, NAME, VER], op_id=f"download_{single}_version")
# jobs
JB = "/api/v1/org/{org}/ws/{ws}/training/jobs"
op(JB, "post", "E1 Create a training job", "training",
   {**ok(201, "TrainingJob", "Created", headers={"Location": {"schema": {"type": "string"}, "description": "URL of the new job"}}), **errs(*AUTH_ERR, 409)},
   params=[ORG, WS, IDEM], body=jbody("CreateTrainingJobRequest"), op_id="create_training_job")
op(JB, "get", "E2 List training jobs, newest first", "training", {**ok(200, "TrainingJobList"), **errs(*AUTH_ERR)},
   params=[ORG, WS] + PAGE + [Q("status", {"type": "string", "enum": ["pending", "queued", "running", "completed", "failed", "cancelled"]}),
                              Q("backend", {"type": "string", "enum": ["tinker", "ray"]}), Q("trainer_type", {"type": "string", "enum": ["sft", "rl"]}),
                              Q("project_ref", {"type": "string"}), Q("tag", {"type": "string"})], op_id="list_training_jobs")
op(JB + "/{job_id}", "get", "E3 Get a training job", "training", {**ok(200, "TrainingJob"), **errs(*AUTH_ERR)}, params=[ORG, WS, JOB], op_id="get_training_job")
op(JB + "/{job_id}", "delete", "E13 Delete an ended job (its blobs are freed)", "training", {**ok(204, desc="Deleted"), **errs(*AUTH_ERR, 409)}, params=[ORG, WS, JOB], op_id="delete_training_job")
op(JB + "/{job_id}/cancel", "post", "E4 Cancel a queued or running job", "training", {**ok(200, "TrainingJob"), **errs(*AUTH_ERR, 409)}, params=[ORG, WS, JOB], op_id="cancel_training_job")
op(JB + "/{job_id}/retry", "post", "E5 Retry an ended job (same id, attempt + 1)", "training", {**ok(200, "TrainingJob"), **errs(*AUTH_ERR, 409)}, params=[ORG, WS, JOB], op_id="retry_training_job")
op(JB + "/{job_id}/logs", "get", "E6 Log entries", "training", {**ok(200, "TrainingJobLogList"), **errs(*AUTH_ERR)},
   params=[ORG, WS, JOB, Q("after", {"type": "integer", "minimum": 0}), Q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
           Q("level", {"type": "string", "enum": ["debug", "info", "warning", "error"]}, "minimum level")], op_id="list_training_job_logs")
op(JB + "/{job_id}/artifacts", "get", "E7 Job outputs", "training", {**ok(200, "TrainingJobArtifacts"), **errs(*AUTH_ERR)}, params=[ORG, WS, JOB], op_id="get_training_job_artifacts")
op("/api/v1/training/catalog", "get", "E8 Base models the workers can train", "training", {**ok(200, "TrainingCatalogResponse"), **errs(*AUTH_ERR)},
   params=[Q("query", {"type": "string"}), Q("family", {"type": "string"}), Q("algorithm", {"type": "string"}),
           Q("min_size_b", {"type": "number"}), Q("max_size_b", {"type": "number"}), Q("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20})],
   op_id="list_training_catalog")
op(JB + "/{job_id}/rl-context", "get", "E9 RL inputs the server resolved (RL jobs; SFT is 409)", "training", {**ok(200, "TrainingRLContext"), **errs(*AUTH_ERR, 409)},
   params=[ORG, WS, JOB], op_id="get_training_job_rl_context")
op(JB + "/{job_id}/progress", "post", "E10 Push a progress event (worker scope)", "training", {**ok(200, "TrainingJob"), **errs(*AUTH_ERR, 409)},
   params=[ORG, WS, JOB], body=jbody("TrainingJobProgressUpdateRequest"), op_id="post_training_job_progress")
op(JB + "/{job_id}/events", "get", "E11 Server-Sent Events: snapshot, progress, log, heartbeat (15 s), end", "training",
   {"200": {"description": "an event stream; each event's data is one line of JSON (the job for snapshot and end)",
            "content": {"text/event-stream": {"schema": obj({"event": {"type": "string", "enum": ["snapshot", "progress", "log", "heartbeat", "end"]},
                                                             "data": {"type": "string", "description": "JSON text"},
                                                             "id": {"type": "string"}, "retry": {"type": "integer"}},
                                                            ["event", "data"], extra=True,
                                                            desc="one event of the stream")}}}, **errs(*AUTH_ERR)},
   params=[ORG, WS, JOB], op_id="stream_training_job_events")
op(JB + "/{job_id}/checkpoints", "get", "E12 Saved checkpoints", "training", {**ok(200, "CheckpointList"), **errs(*AUTH_ERR)}, params=[ORG, WS, JOB], op_id="list_training_job_checkpoints")
op(JB + "/{job_id}/checkpoints/{name}/download", "get", "E12 A checkpoint's PEFT adapter as a tar", "training",
   {"200": {"description": "tar with adapter_config.json and adapter_model.safetensors at its root",
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}, **errs(*AUTH_ERR)},
   params=[ORG, WS, JOB, P("name", "checkpoint name (checkpoint-<n>-step<step> or final)", {"type": "string"})], op_id="download_training_job_checkpoint")

doc = {
    "openapi": "3.1.0",
    "info": {"title": "lathe", "version": "0.1.0",
             "description": "Self-hosted LoRA fine-tuning service: the hosted-training API (Tinker SFT, Tinker RL, Ray GRPO), "
                            "a registry of versioned datasets, capabilities and tasks, identity and tenancy. "
                            "Every non-2xx response is the Error envelope. Unknown body fields are 422 extra_forbidden; "
                            "explicit null equals a missing optional field.",
             "license": {"name": "see the repository"}},
    "servers": [{"url": "/"}],
    "tags": [{"name": n} for n in ("health", "identity", "compat", "artifacts", "training")],
    "security": [{"ApiKeyHeader": []}, {"BearerAuth": []}],
    "paths": paths,
    "components": {
        "securitySchemes": {"ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "lk_ + 40 base62 characters"},
                            "BearerAuth": {"type": "http", "scheme": "bearer", "description": "the same API key as a bearer token"}},
        "schemas": schemas, "responses": responses,
    },
}


def main(argv):
    import pathlib
    out = pathlib.Path(__file__).with_name("openapi.json")
    text = json.dumps(doc, indent=1) + "\n"
    if "--check" in argv:
        same = out.exists() and out.read_text() == text
        print("%s is %s" % (out, "up to date" if same else "STALE: run python3 src/api/openapi.py"))
        return 0 if same else 1
    out.write_text(text)
    print("wrote %s: %d paths, %d operations" % (out, len(paths), sum(len(v) for v in paths.values())))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
