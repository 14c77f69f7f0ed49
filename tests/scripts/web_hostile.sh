#!/usr/bin/env bash
# tests/test_browser.py: output that would run code if it were ever inserted as HTML.
echo '<script>alert("xss-stdout")</script>'
echo '<img src=x onerror=alert("xss-img")>' >&2
printf '\033[31m<b onmouseover=alert(1)>red</b>\033[0m \033]8;;javascript:alert(2)\007link\033]8;;\007\n'
echo '</script><script>alert("xss-break")</script>'
