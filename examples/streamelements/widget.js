/*
 * twitch-oauth-proxy widget kit: the streamer's Twitch profile and live status.
 *
 * Runs as a StreamElements custom widget (this file is the JS tab) and in
 * obs.html. It waits for the "onWidgetLoad" event StreamElements sends (obs.html
 * sends the same one), reads proxyUrl and proxyKey from obj.detail.fieldData and
 * polls the proxy's /helix/users and /helix/streams with
 * "Authorization: Bearer <proxy key>". The widget never holds a Twitch token and
 * never refreshes one: the proxy does that, once, for every copy of the widget.
 *
 * Polite polling: one poll (two requests) every pollSeconds, never more often
 * than every MIN_POLL_SECONDS. When Ratelimit-Remaining runs low it waits for
 * Ratelimit-Reset; a 429 or a 503 waits for Retry-After; other failures back off
 * exponentially up to MAX_BACKOFF_SECONDS. On 401 reauthorization_required it
 * says where to log in again and checks again every REAUTH_RECHECK_SECONDS, so it
 * recovers by itself once the streamer has logged in (the key stays the same).
 */
(function () {
  "use strict";

  var MIN_POLL_SECONDS = 5;
  var MAX_BACKOFF_SECONDS = 600;
  var REAUTH_RECHECK_SECONDS = 300;
  var CALLS_PER_POLL = 2;
  // The profile rarely changes: ask for it again every this many polls.
  var PROFILE_EVERY_POLLS = 10;

  var DEFAULTS = {
    proxyUrl: "",
    proxyKey: "",
    pollSeconds: 60,
    showOffline: true,
    textColor: "#ffffff",
    backgroundColor: "rgba(14, 14, 16, 0.85)",
    accentColor: "#9146ff",
    fontSize: 28,
  };

  /** A non-2xx answer from the proxy (or Twitch through it). */
  function HttpFailure(status, body, headers) {
    this.status = status;
    this.body = body || {};
    this.retryAfter = Number(headers.get("Retry-After")) || null;
  }

  /**
   * Seconds until the next poll. Pure, so it can be tested on its own.
   * outcome.kind: "ok" | "rate-limited" | "error" | "reauth" | "bad-key" | "config";
   * outcome.ratelimit: {remaining, reset} (reset in Unix seconds) or null;
   * outcome.retryAfter: seconds or null; outcome.failures: errors in a row.
   * Returns null when polling should stop.
   */
  function nextDelaySeconds(outcome, pollSeconds, nowSeconds) {
    var base = Math.max(MIN_POLL_SECONDS, Number(pollSeconds) || DEFAULTS.pollSeconds);
    var ratelimit = outcome.ratelimit;
    var untilReset = ratelimit && ratelimit.reset ? Math.ceil(ratelimit.reset - nowSeconds) + 1 : 0;
    switch (outcome.kind) {
      case "ok":
        if (ratelimit && ratelimit.remaining !== null && ratelimit.remaining < 2 * CALLS_PER_POLL) {
          return Math.max(base, untilReset);
        }
        return base;
      case "rate-limited":
        return Math.max(base, outcome.retryAfter || 0, untilReset);
      case "error": {
        var backoff = Math.min(MAX_BACKOFF_SECONDS, base * Math.pow(2, Math.max(0, outcome.failures - 1)));
        return Math.max(backoff, outcome.retryAfter || 0);
      }
      case "reauth":
        return Math.max(base, REAUTH_RECHECK_SECONDS);
      default: // "bad-key", "config": nothing will change until the fields do
        return null;
    }
  }

  function settingsFrom(fieldData) {
    var settings = {};
    Object.keys(DEFAULTS).forEach(function (name) {
      var value = fieldData && fieldData[name];
      settings[name] = value === undefined || value === null || value === "" ? DEFAULTS[name] : value;
    });
    settings.proxyUrl = String(settings.proxyUrl).trim().replace(/\/+$/, "");
    settings.proxyKey = String(settings.proxyKey).trim();
    settings.showOffline = settings.showOffline !== false && settings.showOffline !== "false";
    return settings;
  }

  function Widget(root) {
    this.root = root;
    this.avatar = root.querySelector("#tpw-avatar");
    this.name = root.querySelector("#tpw-name");
    this.live = root.querySelector("#tpw-live");
    this.message = root.querySelector("#tpw-message");
    this.timer = null;
    this.generation = 0;
  }

  Widget.prototype.start = function (fieldData) {
    clearTimeout(this.timer);
    this.generation += 1;
    this.settings = settingsFrom(fieldData);
    this.user = null;
    this.polls = 0;
    this.failures = 0;
    this.ratelimit = null;
    this.shownProfile = false;
    var style = this.root.style;
    style.setProperty("--tpw-text", this.settings.textColor);
    style.setProperty("--tpw-background", this.settings.backgroundColor);
    style.setProperty("--tpw-accent", this.settings.accentColor);
    style.setProperty("--tpw-size", Number(this.settings.fontSize) + "px");
    if (!/^https?:\/\//.test(this.settings.proxyUrl) || !this.settings.proxyKey) {
      this.setState("config", "Set the Proxy URL and Proxy key in this widget's fields.");
      return;
    }
    this.poll(this.generation);
  };

  Widget.prototype.setState = function (state, message) {
    this.root.dataset.state = state;
    this.message.textContent = message || "";
    this.message.hidden = !message;
  };

  Widget.prototype.noteRatelimit = function (headers) {
    var remaining = headers.get("Ratelimit-Remaining");
    var reset = headers.get("Ratelimit-Reset");
    if (remaining !== null || reset !== null) {
      this.ratelimit = {
        remaining: remaining === null ? null : Number(remaining),
        reset: reset === null ? null : Number(reset),
      };
      // Visible to whoever inspects the widget (and to the project's tests).
      this.root.dataset.ratelimitRemaining = remaining === null ? "" : remaining;
    }
  };

  Widget.prototype.helix = async function (path) {
    var response = await fetch(this.settings.proxyUrl + "/helix/" + path, {
      headers: { Authorization: "Bearer " + this.settings.proxyKey },
      cache: "no-store",
    });
    this.noteRatelimit(response.headers);
    var body = await response.json().catch(function () { return {}; });
    if (!response.ok) throw new HttpFailure(response.status, body, response.headers);
    return body;
  };

  Widget.prototype.poll = async function (generation) {
    var outcome;
    this.polls += 1;
    try {
      if (!this.user || this.polls % PROFILE_EVERY_POLLS === 0) {
        var users = await this.helix("users");
        if (!users.data || !users.data.length) throw new HttpFailure(502, {}, new Headers());
        this.user = users.data[0];
      }
      var streams = await this.helix("streams?user_id=" + encodeURIComponent(this.user.id));
      if (generation !== this.generation) return;
      this.showProfile(this.user, (streams.data || [])[0]);
      this.failures = 0;
      outcome = { kind: "ok" };
    } catch (error) {
      if (generation !== this.generation) return;
      outcome = this.showFailure(error);
    }
    outcome.ratelimit = this.ratelimit;
    this.root.dataset.polls = String(this.polls);
    var delay = nextDelaySeconds(outcome, this.settings.pollSeconds, Date.now() / 1000);
    if (delay === null) return;
    if (outcome.kind === "error") delay *= 0.9 + Math.random() * 0.2; // spread many widgets out
    var self = this;
    this.timer = setTimeout(function () { self.poll(generation); }, delay * 1000);
  };

  Widget.prototype.showProfile = function (user, stream) {
    this.shownProfile = true;
    this.root.dataset.live = String(Boolean(stream));
    this.root.style.visibility = stream || this.settings.showOffline ? "" : "hidden";
    this.name.textContent = user.display_name || user.login;
    if (/^https?:\/\//.test(user.profile_image_url || "")) {
      if (this.avatar.src !== user.profile_image_url) this.avatar.src = user.profile_image_url;
      this.avatar.hidden = false;
    } else {
      this.avatar.hidden = true;
    }
    this.live.textContent = "";
    if (stream) {
      var badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "LIVE";
      var viewers = Number(stream.viewer_count || 0).toLocaleString("en-US");
      var what = [viewers + (stream.viewer_count === 1 ? " viewer" : " viewers")];
      if (stream.game_name) what.push(stream.game_name);
      this.live.append(badge, what.join(" · "));
    } else {
      this.live.textContent = "Offline";
    }
    this.setState("ok", "");
  };

  Widget.prototype.showFailure = function (error) {
    var body = error instanceof HttpFailure ? error.body : {};
    if (error instanceof HttpFailure && error.status === 401) {
      if (body.error === "reauthorization_required") {
        var loginUrl = body.login_url || this.settings.proxyUrl + "/login";
        this.root.style.visibility = "";
        this.setState("reauth", "Twitch needs the streamer to log in again: open " + loginUrl);
        return { kind: "reauth" };
      }
      if (body.error === "invalid_proxy_key") {
        this.root.style.visibility = "";
        this.setState("bad-key", "This proxy key is unknown or was revoked. Get a new one at "
          + this.settings.proxyUrl + "/ and paste it into the widget's fields.");
        return { kind: "bad-key" };
      }
    }
    this.failures += 1;
    var retryAfter = error instanceof HttpFailure ? error.retryAfter : null;
    if (error instanceof HttpFailure && error.status === 429) {
      this.root.dataset.state = "rate-limited";
      return { kind: "rate-limited", retryAfter: retryAfter };
    }
    // Keep showing what was last known; say something only if nothing was shown yet.
    this.root.dataset.state = "error";
    if (!this.shownProfile) {
      this.setState("error", "Cannot reach Twitch through the proxy yet; retrying.");
    }
    return { kind: "error", retryAfter: retryAfter, failures: this.failures };
  };

  var widget = null;
  window.addEventListener("onWidgetLoad", function (obj) {
    var root = document.getElementById("tpw");
    if (!root) return;
    widget = widget || new Widget(root);
    widget.start((obj && obj.detail && obj.detail.fieldData) || {});
  });

  // For tests and for debugging in a browser console; not used by the widget.
  window.TwitchProxyWidget = {
    nextDelaySeconds: nextDelaySeconds,
    MIN_POLL_SECONDS: MIN_POLL_SECONDS,
    MAX_BACKOFF_SECONDS: MAX_BACKOFF_SECONDS,
  };
})();
