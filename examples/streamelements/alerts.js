/*
 * twitch-oauth-proxy widget kit: an alert box for follows and subs, live.
 *
 * Runs as a StreamElements custom widget (this file is the JS tab, alerts.html
 * the HTML tab, alerts.css the CSS tab) and in alerts-obs.html. It waits for
 * "onWidgetLoad", reads proxyUrl and proxyKey from obj.detail.fieldData, and
 * listens to the proxy's /eventsub stream (Server-Sent Events) with EventSource.
 * The proxy holds the one EventSub connection to Twitch for every widget of the
 * streamer, refreshes the token and resubscribes after drops: the widget only
 * shows what arrives.
 *
 * EventSource cannot send an Authorization header, and the proxy key must never
 * go into a URL, so each connection starts with POST /eventsub/tickets (the key
 * in the header) and opens /eventsub?ticket=... with the single-use ticket it
 * gets. A ticket works once, so when the stream breaks the widget does not let
 * EventSource retry with the spent ticket: it closes it, gets a new ticket and
 * reconnects with last_event_id, so the proxy replays what was missed (or sends
 * a "gap" event when it no longer can). Failures back off exponentially up to
 * MAX_BACKOFF_SECONDS; a grant that needs a new login is shown with its login
 * URL and checked again every REAUTH_RECHECK_SECONDS.
 */
(function () {
  "use strict";

  var MIN_BACKOFF_SECONDS = 2;
  var MAX_BACKOFF_SECONDS = 120;
  var REAUTH_RECHECK_SECONDS = 300;
  // The types this box shows, as the proxy names them (type:version).
  var TYPES = {
    follows: "channel.follow:2",
    subs: "channel.subscribe:1",
    gifts: "channel.subscription.gift:1",
  };

  var DEFAULTS = {
    proxyUrl: "",
    proxyKey: "",
    showFollows: true,
    showSubs: true,
    showGifts: false,
    alertSeconds: 6,
    textColor: "#ffffff",
    backgroundColor: "rgba(14, 14, 16, 0.85)",
    accentColor: "#9146ff",
    fontSize: 32,
  };

  /** A non-2xx answer from the proxy. */
  function HttpFailure(status, body) {
    this.status = status;
    this.body = body || {};
  }

  function truthy(value) {
    return value !== false && value !== "false";
  }

  function settingsFrom(fieldData) {
    var settings = {};
    Object.keys(DEFAULTS).forEach(function (name) {
      var value = fieldData && fieldData[name];
      settings[name] = value === undefined || value === null || value === "" ? DEFAULTS[name] : value;
    });
    settings.proxyUrl = String(settings.proxyUrl).trim().replace(/\/+$/, "");
    settings.proxyKey = String(settings.proxyKey).trim();
    settings.types = [];
    if (truthy(settings.showFollows)) settings.types.push(TYPES.follows);
    if (truthy(settings.showSubs)) settings.types.push(TYPES.subs);
    if (truthy(settings.showGifts)) settings.types.push(TYPES.gifts);
    return settings;
  }

  /** The text of an alert for one event, or null for events this box does not show. */
  function alertText(type, event) {
    var who = event.user_name || event.user_login || "Someone";
    switch (type) {
      case "channel.follow":
        return { title: who, detail: "just followed!" };
      case "channel.subscribe": {
        var tier = String(event.tier || "1000").charAt(0);
        return { title: who, detail: event.is_gift ? "got a gifted Tier " + tier + " sub!"
          : "subscribed at Tier " + tier + "!" };
      }
      case "channel.subscription.gift": {
        var count = Number(event.total || 1);
        var giver = event.is_anonymous ? "An anonymous gifter" : who;
        return { title: giver, detail: "gifted " + count + (count === 1 ? " sub!" : " subs!") };
      }
      default:
        return null;
    }
  }

  function AlertBox(root) {
    this.root = root;
    this.title = root.querySelector("#tpa-title");
    this.detail = root.querySelector("#tpa-detail");
    this.message = root.querySelector("#tpa-message");
    this.source = null;
    this.timer = null;
    this.showing = null;
    this.queue = [];
    this.generation = 0;
  }

  AlertBox.prototype.start = function (fieldData) {
    this.stop();
    this.generation += 1;
    this.settings = settingsFrom(fieldData);
    this.lastEventId = null;
    this.failures = 0;
    this.shown = 0;
    var style = this.root.style;
    style.setProperty("--tpa-text", this.settings.textColor);
    style.setProperty("--tpa-background", this.settings.backgroundColor);
    style.setProperty("--tpa-accent", this.settings.accentColor);
    style.setProperty("--tpa-size", Number(this.settings.fontSize) + "px");
    if (!/^https?:\/\//.test(this.settings.proxyUrl) || !this.settings.proxyKey) {
      this.setState("config", "Set the Proxy URL and Proxy key in this widget's fields.");
      return;
    }
    if (!this.settings.types.length) {
      this.setState("config", "Pick at least one kind of alert in this widget's fields.");
      return;
    }
    this.connect(this.generation);
  };

  AlertBox.prototype.stop = function () {
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  };

  AlertBox.prototype.setState = function (state, message) {
    this.root.dataset.state = state;
    this.message.textContent = message || "";
    this.message.hidden = !message;
  };

  AlertBox.prototype.ticket = async function () {
    var response = await fetch(this.settings.proxyUrl + "/eventsub/tickets", {
      method: "POST",
      headers: { Authorization: "Bearer " + this.settings.proxyKey },
      cache: "no-store",
    });
    var body = await response.json().catch(function () { return {}; });
    if (!response.ok) throw new HttpFailure(response.status, body);
    return body.ticket;
  };

  AlertBox.prototype.connect = async function (generation) {
    var ticket;
    try {
      ticket = await this.ticket();
    } catch (error) {
      if (generation === this.generation) this.failed(error, generation);
      return;
    }
    if (generation !== this.generation) return;
    var query = this.settings.types.map(function (type) {
      return "type=" + encodeURIComponent(type);
    });
    query.push("ticket=" + encodeURIComponent(ticket));
    if (this.lastEventId) query.push("last_event_id=" + encodeURIComponent(this.lastEventId));
    var source = new EventSource(this.settings.proxyUrl + "/eventsub?" + query.join("&"));
    this.source = source;
    var self = this;
    source.onopen = function () {
      self.failures = 0;
      self.setState("listening", "");
    };
    source.onerror = function (event) {
      // The proxy's own "error" events (a refused subscription) carry data and
      // are handled below; this is the connection failing. The ticket is
      // spent: reconnecting is ours to do, with a new one.
      if (event && event.data) return;
      source.close();
      if (self.source === source) self.failed(new HttpFailure(0, {}), generation);
    };
    Object.keys(TYPES).forEach(function (name) {
      source.addEventListener(TYPES[name].split(":")[0], function (message) {
        self.noteId(message);
        self.enqueue(message.type, JSON.parse(message.data));
      });
    });
    source.addEventListener("gap", function (message) { self.noteId(message); });
    source.addEventListener("revoked", function (message) {
      self.noteId(message);
      var data = JSON.parse(message.data);
      self.setState("revoked", "Twitch stopped sending " + data.subscription_type
        + " events (" + data.status + ").");
    });
    source.addEventListener("error", function (message) {
      if (!message.data) return; // the connection's own error event, handled above
      var data = JSON.parse(message.data);
      self.setState("refused", "Twitch refused " + data.subscription_type + ": " + data.message);
    });
    source.addEventListener("reauthorization_required", function (message) {
      var data = JSON.parse(message.data);
      self.stop();
      self.reauth(data.login_url, generation);
    });
  };

  AlertBox.prototype.noteId = function (message) {
    if (message.lastEventId) this.lastEventId = message.lastEventId;
  };

  AlertBox.prototype.reauth = function (loginUrl, generation) {
    this.setState("reauth", "Twitch needs the streamer to log in again: open "
      + (loginUrl || this.settings.proxyUrl + "/login"));
    var self = this;
    this.timer = setTimeout(function () { self.connect(generation); },
      REAUTH_RECHECK_SECONDS * 1000);
  };

  AlertBox.prototype.failed = function (error, generation) {
    var body = error.body || {};
    if (error.status === 401 && body.error === "reauthorization_required") {
      this.reauth(body.login_url, generation);
      return;
    }
    if (error.status === 401 && body.error === "invalid_proxy_key") {
      this.setState("bad-key", "This proxy key is unknown or was revoked. Get a new one at "
        + this.settings.proxyUrl + "/ and paste it into the widget's fields.");
      return;
    }
    this.failures += 1;
    this.root.dataset.state = "reconnecting";
    var delay = Math.min(MAX_BACKOFF_SECONDS,
      MIN_BACKOFF_SECONDS * Math.pow(2, this.failures - 1));
    delay *= 0.9 + Math.random() * 0.2; // spread many widgets out
    var self = this;
    this.timer = setTimeout(function () { self.connect(generation); }, delay * 1000);
  };

  AlertBox.prototype.enqueue = function (type, event) {
    var text = alertText(type, event);
    if (!text) return;
    this.queue.push(text);
    if (!this.showing) this.next();
  };

  AlertBox.prototype.next = function () {
    var text = this.queue.shift();
    this.showing = text || null;
    this.root.dataset.showing = String(Boolean(text));
    if (!text) return;
    this.title.textContent = text.title;
    this.detail.textContent = text.detail;
    this.shown += 1;
    // Visible to whoever inspects the widget (and to the project's tests).
    this.root.dataset.shown = String(this.shown);
    var self = this;
    setTimeout(function () { self.next(); }, Number(this.settings.alertSeconds) * 1000);
  };

  var box = null;
  window.addEventListener("onWidgetLoad", function (obj) {
    var root = document.getElementById("tpa");
    if (!root) return;
    box = box || new AlertBox(root);
    box.start((obj && obj.detail && obj.detail.fieldData) || {});
  });

  // For tests and for debugging in a browser console; not used by the widget.
  window.TwitchProxyAlerts = { alertText: alertText, TYPES: TYPES };
})();
