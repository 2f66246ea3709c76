// forms.js: the create-job form for Tinker SFT, Tinker RL and Ray GRPO, filled from the model catalog and
// the registry. The server is the only validator: a 422 (or a 404 for a reference) comes back with errors[],
// and each item is shown at the field its loc names (["body","config","batch_size"] -> config.batch_size);
// items naming no field of the form are listed at the top.

import { h, replace, clear } from "./dom.js";
import { api, get, jobsPath, artPath, ApiError, enc } from "./api.js";

const KINDS = {
  sft: { backend: "tinker", trainer_type: "sft", label: "SFT (tinker)" },
  rl: { backend: "tinker", trainer_type: "rl", label: "RL (tinker)" },
  grpo: { backend: "ray", trainer_type: "rl", label: "GRPO (ray)" },
};

// Config fields: [name, label, kind ("ref" | "task" | "int" | "num" | "enum" | "json" | "text"), which job kinds, choices].
const CFG = [
  ["dataset_ref", "dataset", "ref", ["sft"]],
  ["prompt_dataset_ref", "prompt dataset", "ref", ["rl", "grpo"]],
  ["eval_dataset_ref", "eval dataset", "ref", ["sft", "rl"]],
  ["task_ref", "task", "task", ["rl", "grpo"]],
  ["algorithm", "algorithm", "enum", ["rl"], ["importance_sampling", "ppo"]],
  ["reward_recipe", "reward recipe", "enum", ["rl", "grpo"], ["", "exact_match_v1", "contains_v1", "row_reward_v1",
    "trajectory_imitation_v1", "task_verifier_v1", "gsm8k_v1", "task_env_verifier_v1", "task_env_agent_v1"]],
  ["execution_mode", "execution mode", "enum", ["grpo"], ["", "async", "colocated", "distributed"]],
  ["steps", "steps", "int", ["sft", "rl", "grpo"]],
  ["epochs", "epochs", "int", ["sft"]],
  ["batch_size", "batch size", "int", ["sft", "rl", "grpo"]],
  ["num_rollouts", "rollouts", "int", ["rl", "grpo"]],
  ["learning_rate", "learning rate", "num", ["sft", "rl", "grpo"]],
  ["lora_rank", "LoRA rank", "int", ["sft", "rl"]],
  ["lora_alpha", "LoRA alpha", "num", ["sft", "rl"]],
  ["max_new_tokens", "max new tokens", "int", ["rl"]],
  ["checkpoint_interval", "checkpoint interval", "int", ["sft", "rl", "grpo"]],
];

async function refs(kind) {
  try {
    const r = await get(artPath(kind) + "?page=1&page_size=100");
    const out = [];
    for (const a of r.items) {
      const d = await get(`${artPath(kind)}/${enc(a.name)}`);
      for (const v of d.versions) out.push({ name: a.name, version: v.version });
    }
    return out;
  } catch (_) { return []; }
}

export async function createPage(root, params) {
  const q = new URLSearchParams(params);
  const [catalog, datasets, caps, tasks] = await Promise.all([
    get("/api/v1/training/catalog?limit=100").catch(() => ({ models: [] })),
    refs("datasets"), refs("capabilities"), refs("tasks")]);
  const kindSel = h("select", { name: "kind", "data-testid": "kind" },
    Object.entries(KINDS).map(([k, v]) => h("option", { value: k, selected: k === (q.get("kind") || "sft") }, v.label)));
  const fieldsBox = h("div", { class: "form-grid" });
  const general = h("ul", { class: "bad", "data-testid": "form-errors" });
  const refOpt = (r) => h("option", { value: JSON.stringify({ name: r.name, version: r.version }) }, `${r.name}@${r.version}`);
  const inputs = {}; // "model" | "config.steps" ... -> element
  const errs = {};   // same keys -> the error element under the field

  function field(key, label, control) {
    inputs[key] = control;
    errs[key] = h("div", { class: "field-error", "data-testid": "error-" + key });
    return h("div", { class: "field", "data-field": key }, h("label", {}, label), control, errs[key]);
  }

  function build() {
    const kind = kindSel.value;
    clear(fieldsBox);
    for (const k of Object.keys(inputs)) { delete inputs[k]; delete errs[k]; }
    fieldsBox.appendChild(field("name", "name", h("input", { name: "name", placeholder: "(optional)" })));
    fieldsBox.appendChild(field("model", "model", h("select", { name: "model" },
      catalog.models.map((m) => h("option", { value: m.tinker_id, selected: m.tinker_id === q.get("model") }, m.tinker_id)))));
    fieldsBox.appendChild(field("capability_ref", "capability", h("select", { name: "capability_ref" }, caps.map(refOpt))));
    for (const [name, label, type, kinds, choices] of CFG) {
      if (!kinds.includes(kind)) continue;
      let c;
      if (type === "ref") {
        c = h("select", { name }, h("option", { value: "" }, "(none)"), datasets.map(refOpt));
        if (name !== "eval_dataset_ref" && datasets.length) c.selectedIndex = 1;
      }
      else if (type === "task") c = h("select", { name }, h("option", { value: "" }, "(none)"),
        [...new Set(tasks.map((t) => t.name))].map((n) => h("option", { value: n }, n)));
      else if (type === "enum") c = h("select", { name }, choices.map((x) => h("option", { value: x }, x || "(default)")));
      else c = h("input", { name, placeholder: "default", type: "text" });
      fieldsBox.appendChild(field("config." + name, label, c));
    }
    fieldsBox.appendChild(field("tags", "tags", h("input", { name: "tags", placeholder: "comma-separated" })));
    fieldsBox.appendChild(field("config", "more config (JSON object, merged)", h("textarea", { name: "extra", rows: "3", placeholder: "{}" })));
  }

  function body() {
    const k = KINDS[kindSel.value];
    const b = { backend: k.backend, trainer_type: k.trainer_type, model: inputs.model.value, config: {} };
    if (inputs.name.value.trim()) b.name = inputs.name.value.trim();
    if (inputs.capability_ref.value) b.capability_ref = JSON.parse(inputs.capability_ref.value);
    const tags = inputs.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    if (tags.length) b.tags = tags;
    for (const [name, , type] of CFG) {
      const el = inputs["config." + name];
      if (!el || el.value === "") continue;
      const v = el.value.trim();
      if (type === "ref") b.config[name] = JSON.parse(v);
      else if (type === "int" || type === "num") b.config[name] = /^-?[0-9.eE+-]+$/.test(v) ? Number(v) : v;
      else if (name === "reward_recipe") b.config[name] = { name: v };
      else b.config[name] = v;
    }
    const extra = inputs.config.value.trim();
    if (extra) Object.assign(b.config, JSON.parse(extra));
    return b;
  }

  function showErrors(list) {
    clear(general);
    for (const k of Object.keys(errs)) { errs[k].textContent = ""; errs[k].parentNode.classList.remove("invalid"); }
    for (const e of list) {
      const loc = (e.loc || []).filter((x, i) => !(i === 0 && x === "body"));
      // the deepest prefix of loc that is a field of the form
      let key = null;
      for (let n = loc.length; n > 0 && !key; n--) {
        const kk = loc.slice(0, n).join(".");
        if (errs[kk]) key = kk;
      }
      if (key) {
        errs[key].textContent = (errs[key].textContent ? errs[key].textContent + "; " : "") + e.msg;
        errs[key].parentNode.classList.add("invalid");
      } else {
        general.appendChild(h("li", {}, `${loc.join(".") || "body"}: ${e.msg}`));
      }
    }
  }

  const submit = h("button", { type: "submit", "data-testid": "create-submit" }, "Create job");
  const form = h("form", { class: "card create", "data-testid": "create-form" },
    h("div", { class: "field" }, h("label", {}, "kind"), kindSel), fieldsBox, general, submit);
  kindSel.addEventListener("change", build);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let b;
    try { b = body(); } catch (ex) { showErrors([{ loc: ["body", "config"], msg: "more config: " + ex.message }]); return; }
    try {
      const j = await api("POST", jobsPath(), b);
      location.hash = "#/job/" + enc(j.id);
    } catch (ex) {
      if (ex instanceof ApiError && ex.errors.length) showErrors(ex.errors);
      else showErrors([{ loc: [], msg: ex.message }]);
    }
  });
  build();
  replace(root, h("h1", {}, "New training job"), form);
}
