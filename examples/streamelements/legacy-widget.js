/*
 * The old token tool's widget code, kept as it was except for one line: PROXY.
 * It shows that widgets written for the old Flask tool keep working against
 * twitch-oauth-proxy: same fields, same calls, same answers.
 *
 * What it does (as before): it holds a Twitch access token and refresh token
 * from its fields, validates the access token at Twitch when it loads and every
 * hour, and when Twitch says the token is invalid it POSTs the refresh token to
 * PROXY + "/refresh" and uses the new pair. Then it calls Helix itself.
 *
 * StreamElements: HTML tab `<div id="name"></div>`, this file as the JS tab, and
 * fields accessToken, refreshToken and clientId (text).
 *
 * Caveat (the old tool's, not the proxy's): StreamElements cannot save a rotated
 * token into the fields, so every reload starts from the pair in the fields. The
 * proxy copes: it remembers the rotation and answers that old refresh token with
 * the current pair. New widgets should use a proxy key instead (widget.js).
 */

// The one line changed for twitch-oauth-proxy: where the proxy lives.
const PROXY = "https://your-proxy.example";

// Twitch itself. A page may set these globals before loading this file (the
// project's browser test does, since Twitch is unreachable from it).
const VALIDATE_URL = window.TWITCH_VALIDATE_URL || "https://id.twitch.tv/oauth2/validate";
const HELIX_URL = window.TWITCH_HELIX_URL || "https://api.twitch.tv/helix";

let fieldData = {};
let accessToken = "";
let refreshToken = "";

function validateToken() {
  return fetch(VALIDATE_URL, {
    headers: { Authorization: "OAuth " + accessToken },
  }).then(function (res) {
    return res.ok ? res.json() : null;
  });
}

function refreshTokens() {
  return fetch(PROXY + "/refresh", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ refresh_token: refreshToken }),
  })
    .then(function (res) {
      if (!res.ok) throw new Error("refresh failed (" + res.status + ")");
      return res.json();
    })
    .then(function (data) {
      accessToken = data.access_token;
      refreshToken = data.refresh_token;
    });
}

function ensureValidToken() {
  return validateToken().then(function (info) {
    if (info) return info;
    return refreshTokens().then(validateToken);
  });
}

function showUser() {
  return fetch(HELIX_URL + "/users", {
    headers: { "Client-Id": fieldData.clientId, Authorization: "Bearer " + accessToken },
  })
    .then(function (res) {
      return res.json();
    })
    .then(function (body) {
      document.getElementById("name").textContent = body.data[0].display_name;
    });
}

function run() {
  ensureValidToken()
    .then(showUser)
    .catch(function (err) {
      document.getElementById("name").textContent = "Error: " + err.message;
    });
}

window.addEventListener("onWidgetLoad", function (obj) {
  fieldData = obj.detail.fieldData;
  accessToken = fieldData.accessToken;
  refreshToken = fieldData.refreshToken;
  run();
  // Twitch asks apps to validate their tokens every hour.
  setInterval(run, 60 * 60 * 1000);
});
