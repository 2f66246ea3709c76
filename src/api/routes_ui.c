/* routes_ui.c: the web dashboard (docs/dashboard.md): GET / and GET /ui/{file}, the files of web/ compiled
 * into the binary.
 *
 * The dashboard is plain HTML, CSS and JavaScript modules of our own (web/), with no build step: each file
 * is embedded at build time with the assembler's .incbin (as openapi.c embeds openapi.json), so the server
 * needs no file at run time and the page always matches the binary that serves it. The Makefile lists
 * the files of web/ as prerequisites of this object, so an edit of an asset rebuilds it. A new asset is one
 * line of UI_ASSETS below and one EMBED line.
 *
 * The pages speak only the public API with the key the user typed (kept in the tab's sessionStorage, sent
 * as X-API-Key, never in a URL), so these routes are public and hold nothing secret. Every answer carries a
 * strict Content-Security-Policy (scripts, styles and connections from this origin only, no inline script or
 * style, no framing), X-Content-Type-Options: nosniff and Referrer-Policy: no-referrer. `lathe serve
 * --no-ui` leaves the routes out (api_config.no_ui), and / then answers 404 like any unknown path. */
#include <stddef.h>
#include <string.h>

#include "api/http.h"

#define EMBED(sym, file)                                                                                     \
    __asm__(".pushsection .rodata\n"                                                                         \
            ".balign 16\n" #sym "_start:\n"                                                                  \
            ".incbin \"" file "\"\n" #sym "_end:\n"                                                          \
            ".byte 0\n"                                                                                      \
            ".popsection\n");                                                                                \
    extern const char sym##_start[], sym##_end[];

EMBED(ui_index_html, "web/index.html")
EMBED(ui_style_css, "web/style.css")
EMBED(ui_app_js, "web/app.js")
EMBED(ui_api_js, "web/api.js")
EMBED(ui_dom_js, "web/dom.js")
EMBED(ui_chart_js, "web/chart.js")
EMBED(ui_pages_js, "web/pages.js")
EMBED(ui_job_js, "web/job.js")
EMBED(ui_forms_js, "web/forms.js")
EMBED(ui_favicon_svg, "web/favicon.svg")

typedef struct ui_asset {
    const char *name; /* the path under /ui/ */
    const char *type; /* Content-Type */
    const char *start, *end;
} ui_asset;

#define JS "text/javascript; charset=utf-8"
static const ui_asset UI_ASSETS[] = {
    {"index.html", "text/html; charset=utf-8", ui_index_html_start, ui_index_html_end},
    {"style.css", "text/css; charset=utf-8", ui_style_css_start, ui_style_css_end},
    {"app.js", JS, ui_app_js_start, ui_app_js_end},
    {"api.js", JS, ui_api_js_start, ui_api_js_end},
    {"dom.js", JS, ui_dom_js_start, ui_dom_js_end},
    {"chart.js", JS, ui_chart_js_start, ui_chart_js_end},
    {"pages.js", JS, ui_pages_js_start, ui_pages_js_end},
    {"job.js", JS, ui_job_js_start, ui_job_js_end},
    {"forms.js", JS, ui_forms_js_start, ui_forms_js_end},
    {"favicon.svg", "image/svg+xml", ui_favicon_svg_start, ui_favicon_svg_end},
};
#define UI_NASSETS ((int)(sizeof UI_ASSETS / sizeof UI_ASSETS[0]))

/* The policy: nothing inline, nothing from elsewhere; the API is same-origin (connect-src 'self'), images
 * only from this origin and blob: (none is used today, but a checkpoint download is a blob: URL). */
static const char UI_CSP[] = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                             "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                             "frame-ancestors 'none'";

static void ui_headers(api_resp *resp) {
    api_header_add(resp, "Content-Security-Policy", UI_CSP);
    api_header_add(resp, "X-Content-Type-Options", "nosniff");
    api_header_add(resp, "X-Frame-Options", "DENY");
    api_header_add(resp, "Referrer-Policy", "no-referrer");
    api_header_add(resp, "Cache-Control", "no-cache");
}

static void ui_send(api_resp *resp, const ui_asset *a) {
    ui_headers(resp);
    api_raw(resp, 200, a->type, a->start, (size_t)(a->end - a->start));
}

/* GET /: the page itself (index.html); the app routes inside it with the URL's #fragment. */
static int get_index(api_req *req, api_resp *resp) {
    (void)req;
    ui_send(resp, &UI_ASSETS[0]);
    return 0;
}

static int get_asset(api_req *req, api_resp *resp) {
    const char *file = api_param(req, "file");
    for (int i = 0; file && i < UI_NASSETS; i++) {
        if (strcmp(UI_ASSETS[i].name, file) == 0) {
            ui_send(resp, &UI_ASSETS[i]);
            return 0;
        }
    }
    ui_headers(resp);
    api_error(resp, 404, "not_found", "no dashboard file '/ui/%s'", file ? file : "");
    return 0;
}

void api_routes_ui(api_router *r) {
    api_route(r, "GET", "/", get_index, API_PUBLIC, 0);
    api_route(r, "GET", "/ui/{file}", get_asset, API_PUBLIC, 0);
}
