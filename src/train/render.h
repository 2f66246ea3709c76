/* render.h: chat conversations to token ids plus per-token training weights, in a model family's format.
 *
 * Renderers (docs/spec.md §5):
 * - qwen3: ChatML, token-exact with Qwen3's chat_template: <|im_start|>role\n...<|im_end|>\n, assistant
 *   reasoning in <think>\n...\n</think>\n\n (after the last user query only, as the template does),
 *   tool calls as <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>, tool results as a user turn
 *   of <tool_response> blocks; generation prompt <|im_start|>assistant\n.
 * - llama3: <|begin_of_text|> then <|start_header_id|>role<|end_header_id|>\n\n{content, trimmed}<|eot_id|>,
 *   no date preamble (token-exact with the Llama 3 chat_template); generation prompt
 *   <|start_header_id|>assistant<|end_header_id|>\n\n.
 * - chatml: plain ChatML (SmolLM2, Qwen2.5): <|im_start|>role\ncontent<|im_end|>\n per message, token-exact
 *   with those templates; when the model's chat template writes a default system message for conversations
 *   that do not start with one, that text (read from the template) comes first; tool calls and tool results
 *   as Qwen2.5 writes them; generation prompt <|im_start|>assistant\n; stops at <|im_end|>.
 * - role_colon: base and tiny models: BOS when the tokenizer has one (unless add_bos_token is false), then
 *   per message "Role:" (weight 0) and " content\n\n" (weight 1 for trained assistant messages); generation
 *   prompt ends "Assistant:".
 * Weights: headers and non-assistant messages 0; each trained assistant message's content and its end-of-turn
 * token 1. By default every assistant message is trained; a message may carry "trainable": true|false.
 *
 * Input is a jansson array of {"role", "content", "tool_calls"?, "tool_call_id"?, "reasoning_content"?,
 * "trainable"?}; content must be a string or null. Special-token strings inside message content are tokenized
 * as plain text (a message cannot inject an <|im_end|>); the structural tokens are emitted by id.
 *
 * Ownership: render_chat fills a render_out the caller releases with render_out_free. render_stops_for
 * fills caller storage; its strings are static. */
#ifndef LATHE_TRAIN_RENDER_H
#define LATHE_TRAIN_RENDER_H

#include <jansson.h>
#include <stddef.h>

#include "engine/tokenizer.h"
#include "util/err.h"

typedef enum { RENDER_QWEN3 = 0, RENDER_LLAMA3, RENDER_ROLE_COLON, RENDER_CHATML } render_kind;

typedef struct {
    int add_generation_prompt; /* append the assistant header (the sampling prompt) */
    int enable_thinking; /* qwen3 generation prompt: 0 appends an empty <think></think> block; default 1 */
    int train_last_only; /* weight only the last assistant message (default: all assistant messages) */
} render_opts;

#define RENDER_OPTS_DEFAULT                                                                                  \
    { 0, 1, 0 }

typedef struct {
    int *ids;
    float *weights; /* one per id: 0 or 1 */
    size_t n;
} render_out;

typedef struct {
    int stop_ids[4]; /* end-of-turn / end-of-text tokens the sampler stops at */
    int n_stop_ids;
    const char *stop_strings[2]; /* role_colon: "\n\nUser:" */
    int n_stop_strings;
} render_stops;

/* "qwen3" | "llama3" | "role_colon" | "chatml" -> kind; 0 ok, -1 unknown. */
int render_kind_parse(const char *name, render_kind *kind);
const char *render_kind_name(render_kind kind);

/* The renderer for a model. From its own chat template when the tokenizer has one (and the tokens it names):
 * Llama 3 headers (<|start_header_id|>) -> llama3; ChatML with <think> -> qwen3; other ChatML (<|im_start|>)
 * -> chatml; except the bare ChatML template `lathe model init-tiny` writes, so tiny models stay role_colon.
 * Without a template (or one of none of these kinds): Llama 3 header tokens (<|start_header_id|>,
 * <|eot_id|>) -> llama3; Qwen3's tokens (<|im_start|>, <|im_end|>, <think>, </think>) -> qwen3; anything
 * else, including base and tiny byte-level models with a bare ChatML vocabulary -> role_colon. family
 * ("llama", "qwen" or NULL) only vetoes the other family's llama3/qwen3 format (chatml serves both: SmolLM2
 * is a llama). */
render_kind render_pick(const eng_tokenizer *tok, const char *family);

/* Renders messages with default options plus add_generation_prompt. Returns 0, or -1 with err (400 naming the
 * message index and field; 400 when the tokenizer lacks a token the format needs). */
int render_chat(const eng_tokenizer *tok, render_kind kind, json_t *messages, int add_generation_prompt,
                render_out *out, lt_err *err);
int render_chat_opts(const eng_tokenizer *tok, render_kind kind, json_t *messages, const render_opts *opts,
                     render_out *out, lt_err *err);
void render_out_free(render_out *out);

/* Stop tokens and strings for sampling after a generation prompt of this kind. */
void render_stops_for(const eng_tokenizer *tok, render_kind kind, render_stops *stops);

#endif
