// Shows why the login page came back (the server redirects to /login?failed=1).
"use strict";
if (new URLSearchParams(window.location.search).has("failed")) {
  document.getElementById("failed").hidden = false;
}
