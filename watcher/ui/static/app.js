// omics-watcher status page: the overview's live feed (server-sent events from /ui/events).
// Without JavaScript the page is complete; only the feed stays as rendered, with a Refresh link.
(function () {
  "use strict";
  var MAX_ITEMS = 100;
  var feed = document.getElementById("feed");
  if (!feed || !window.EventSource) { return; }
  var state = document.getElementById("feed-state");

  function text(tag, className, value) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    node.textContent = value;
    return node;
  }

  function item(ev) {
    var li = document.createElement("li");
    li.className = "new";
    var time = text("time", "", ev.at.slice(11, 19));
    time.setAttribute("datetime", ev.at);
    li.appendChild(time);
    li.appendChild(document.createTextNode(" "));
    var link = text("a", "uuid", ev.run_uuid.slice(0, 8));
    link.href = "/ui/runs/" + encodeURIComponent(ev.run_uuid);
    li.appendChild(link);
    li.appendChild(document.createTextNode(" "));
    li.appendChild(text("span", "type", ev.type));
    li.appendChild(document.createTextNode(" "));
    if (ev.previous) {
      li.appendChild(text("span", "muted", ev.previous + " \u2192"));
      li.appendChild(document.createTextNode(" "));
    }
    li.appendChild(text("span", "status s-" + ev.severity, ev.status || "unknown"));
    return li;
  }

  var source = new EventSource(feed.getAttribute("data-source"));
  source.addEventListener("open", function () {
    if (state) { state.textContent = "Live: new events appear at the top."; }
  });
  source.addEventListener("error", function () {
    if (state) { state.textContent = "Reconnecting…"; }
  });
  source.addEventListener("run-event", function (message) {
    var ev;
    try { ev = JSON.parse(message.data); } catch (e) { return; }
    var empty = feed.querySelector(".empty");
    if (empty) { empty.remove(); }
    feed.insertBefore(item(ev), feed.firstChild);
    while (feed.children.length > MAX_ITEMS) { feed.removeChild(feed.lastChild); }
  });
})();
