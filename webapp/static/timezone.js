// Sign-up and new workspaces: propose the browser's time zone. Without JavaScript the list stays on
// UTC and works as before; a zone the user already picked is left alone.
(function () {
  "use strict";
  const select = document.getElementById("timezone");
  if (!select || select.value !== "UTC") return;
  let zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (error) {
    return;
  }
  if (Array.from(select.options).some((option) => option.value === zone)) select.value = zone;
})();
