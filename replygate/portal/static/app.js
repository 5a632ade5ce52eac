/* replygate portal: keyboard shortcuts (p and e submit the pin and archive
   forms), the shortcut reference, canned responses, local times. Plain
   JavaScript, loaded from our own origin (the CSP allows no inline script).
   Every page works without it. */
(function () {
  "use strict";

  var dialog = document.getElementById("shortcuts");

  function typingIn(el) {
    if (!el || el === document.body) return false;
    if (el.isContentEditable) return true;
    var tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") return true;
    if (tag !== "INPUT") return false;
    var type = (el.getAttribute("type") || "text").toLowerCase();
    return ["button", "submit", "reset", "checkbox", "radio", "hidden", "image"].indexOf(type) < 0;
  }

  function openDialog() {
    if (dialog && !dialog.open) {
      dialog.showModal();
      var close = document.getElementById("close-shortcuts");
      if (close) close.focus();
    }
  }

  function closeDialogs() {
    var open = document.querySelectorAll("dialog[open]");
    for (var i = 0; i < open.length; i++) open[i].close();
    return open.length > 0;
  }

  // -- automatic logoff: a warning a minute before the idle limit, then the login page --
  // The server ends the session by itself (session_idle_seconds); this only tells
  // the person first, and lets them stay signed in without losing what they typed.
  var idle = parseInt(document.body.getAttribute("data-idle-seconds") || "0", 10);
  var warning = document.getElementById("idle-warning");
  var keepAlive = document.getElementById("keep-alive");
  if (idle > 0 && warning && keepAlive) {
    var warnTimer = null, endTimer = null;
    var arm = function () {
      clearTimeout(warnTimer);
      clearTimeout(endTimer);
      var lead = Math.min(60, idle / 2);
      warnTimer = setTimeout(function () { if (!warning.open) warning.showModal(); },
                             (idle - lead) * 1000);
      endTimer = setTimeout(function () {  // a second after the server's own limit
        window.location.assign("/login?expired=1");
      }, (idle + 1) * 1000);
    };
    keepAlive.addEventListener("submit", function (event) {
      event.preventDefault();
      fetch("/session/keep-alive", {
        method: "POST",
        body: new FormData(keepAlive),
        headers: { "X-Requested-With": "replygate" },
        credentials: "same-origin",
        redirect: "manual"
      }).then(function (response) {
        if (response.status === 204) {
          warning.close();
          arm();
        } else {
          window.location.assign("/login?expired=1");
        }
      });
    });
    arm();
  }

  // -- the conversation list: j/k move, Enter opens ---------------------------------
  var rows = Array.prototype.slice.call(document.querySelectorAll("[data-thread-row]"));
  var selected = -1;

  function select(index) {
    if (!rows.length) return;
    index = Math.max(0, Math.min(rows.length - 1, index));
    if (selected >= 0 && rows[selected]) rows[selected].classList.remove("selected");
    selected = index;
    var row = rows[selected];
    row.classList.add("selected");
    var link = row.querySelector("a");
    if (link) link.focus({ preventScroll: true });
    row.scrollIntoView({ block: "nearest" });
  }

  var conversation = document.querySelector("[data-thread]");

  function go(url) {
    if (url) window.location.assign(url);
  }

  // -- p and e: the pin and archive buttons of the selected row or the open thread --
  function placementScope() {
    if (rows.length) {
      if (selected >= 0) return rows[selected];
      var active = document.activeElement;
      return active && active.closest ? active.closest("[data-thread-row]") : null;
    }
    return conversation;
  }

  function submitPlacement(key) {
    var scope = placementScope();
    var form = scope && scope.querySelector('form[data-key="' + key + '"]');
    if (!form) return false;
    form.requestSubmit();
    return true;
  }

  function onKey(event) {
    if (event.isComposing || event.defaultPrevented) return;
    var ctrl = event.ctrlKey || event.metaKey;
    var target = event.target;

    if (event.key === "Escape") {
      if (closeDialogs()) {
        event.preventDefault();
      } else if (typingIn(target)) {
        target.blur();
      }
      return;
    }
    if (ctrl && event.key === "Enter") {
      var form = target && target.form;
      if (form && form.hasAttribute("data-send")) {
        event.preventDefault();
        if (form.reportValidity()) form.requestSubmit();
      }
      return;
    }
    if (typingIn(target)) return;
    if (ctrl && (event.key === "/" || event.code === "Slash")) {
      event.preventDefault();
      if (dialog && dialog.open) dialog.close(); else openDialog();
      return;
    }
    if (ctrl || event.altKey) return;
    if (dialog && dialog.open) return;

    switch (event.key) {
      case "?":
        event.preventDefault();
        openDialog();
        break;
      case "c":
        event.preventDefault();
        go("/compose");
        break;
      case "r": {
        var reply = document.getElementById("reply");
        if (reply) {
          event.preventDefault();
          reply.scrollIntoView({ block: "center" });
          reply.focus();
        }
        break;
      }
      case "u":
        if (conversation) {
          event.preventDefault();
          go("/inbox");
        }
        break;
      case "p":
      case "e":
        if (submitPlacement(event.key)) event.preventDefault();
        break;
      case "j":
        event.preventDefault();
        if (rows.length) select(selected + 1);
        else if (conversation) go(conversation.getAttribute("data-next"));
        break;
      case "k":
        event.preventDefault();
        if (rows.length) select(selected < 0 ? 0 : selected - 1);
        else if (conversation) go(conversation.getAttribute("data-previous"));
        break;
      case "Enter":
        // A focused link opens natively; only act when focus is elsewhere.
        if (selected >= 0 && (!target || target.tagName !== "A") && target.tagName !== "BUTTON") {
          var link = rows[selected].querySelector("a");
          if (link) {
            event.preventDefault();
            go(link.getAttribute("href"));
          }
        }
        break;
      default:
        break;
    }
  }

  if (document.body.hasAttribute("data-shortcuts")) {
    document.addEventListener("keydown", onKey);
  }

  var openers = document.querySelectorAll("[data-open-shortcuts]");
  for (var i = 0; i < openers.length; i++) openers[i].addEventListener("click", openDialog);
  if (dialog) {
    // A click on the backdrop (outside the box) closes the reference too.
    dialog.addEventListener("click", function (event) {
      if (event.target === dialog) dialog.close();
    });
  }

  // -- canned responses fill the subject and body ----------------------------------
  var canned = document.querySelector("[data-canned]");
  if (canned) {
    var subject = document.getElementById("subject");
    var body = document.getElementById("body");
    var filled = { subject: subject.value, body: body.value };
    var apply = document.querySelector("[data-canned-apply]");
    if (apply) apply.hidden = true;
    canned.addEventListener("change", function () {
      var option = canned.options[canned.selectedIndex];
      if (!option || !option.value) return;
      var newSubject = option.getAttribute("data-subject") || "";
      var newBody = option.getAttribute("data-body") || "";
      // Replace what an earlier choice inserted; never overwrite what was typed.
      if (newSubject && (!subject.value.trim() || subject.value === filled.subject)) {
        subject.value = newSubject;
        filled.subject = newSubject;
      }
      if (!body.value.trim() || body.value === filled.body) {
        body.value = newBody;
      } else {
        body.value = body.value.replace(/\s+$/, "") + "\n\n" + newBody;
      }
      filled.body = body.value;
    });
  }

  // -- times in the reader's own time zone -----------------------------------------
  var times = document.querySelectorAll("time[datetime]");
  for (var t = 0; t < times.length; t++) {
    var when = new Date(times[t].getAttribute("datetime"));
    if (!isNaN(when.getTime())) {
      times[t].title = times[t].textContent;
      times[t].textContent = when.toLocaleString(undefined, {
        dateStyle: "medium",
        timeStyle: "short",
      });
    }
  }
})();
